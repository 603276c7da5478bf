/*
 * mce_router.dataplane._llresponse: the container-response reader of the hot path, in C.
 *
 * The same reader as ResponseReader in response.py (which is the reference and the fallback
 * when no C compiler was there at install time), on the same parser: llhttp 9, vendored in
 * vendor/llhttp exactly as httptools ships it. What differs is where the callbacks run. Through
 * httptools every response costs ten Python calls (status, each header, body, completion) and a
 * bytes object per header name and value; here llhttp's callbacks are C functions that keep
 * only what the router uses (status, reason, Content-Type, X-Amzn-SageMaker-Custom-Attributes,
 * the body), and Python makes one call per read.
 *
 * Interface (see response.py for the contract both implementations keep):
 *   ResponseReader(max_body)   one per upstream connection
 *   feed(data) -> outcome      (READ_MORE, got_body) | (COMPLETE, status, reason, content_type,
 *                              custom_attributes, body, size, reusable) | (FAILED, detail)
 *   finish() -> outcome        at EOF: COMPLETE when a close-delimited response ended there
 * One tuple per call, no attribute reads: a getattr on an extension type costs as much as the
 * parse of a short response head.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "llhttp.h"

enum { READ_MORE = 0, COMPLETE = 1, FAILED = 2 };
enum { CAPTURE_NONE = 0, CAPTURE_CONTENT_TYPE, CAPTURE_CUSTOM_ATTRIBUTES };

/* Longer than any header name the reader keeps (x-amzn-sagemaker-custom-attributes: 34). */
#define NAME_BUFFER 40

typedef struct {
    PyObject_HEAD
    llhttp_t parser;
    Py_ssize_t max_body;
    /* the response being parsed */
    int headers_done;
    char name[NAME_BUFFER];
    Py_ssize_t name_len; /* NAME_BUFFER + 1 once the name is longer than any we keep */
    int capture;
    PyObject *value; /* bytes of the captured header value so far, or NULL */
    PyObject *reason;
    PyObject *content_type;
    PyObject *custom_attributes;
    PyObject *body; /* list of bytes */
    Py_ssize_t body_size;
    /* the bytes object being fed (borrowed, NULL between feeds or when not exact bytes) */
    PyObject *feeding;
    /* outcome */
    PyObject *done; /* the COMPLETE outcome of the current feed, reusable filled in at the end */
    int got_body;   /* a body byte arrived in the current feed */
    int reusable;
    int too_large;
    int python_error; /* a callback failed with a Python exception set (MemoryError) */
} Reader;

static llhttp_settings_t reader_settings;
static PyObject *read_more[2]; /* (READ_MORE, False), (READ_MORE, True) */

static void clear_message(Reader *r) {
    r->headers_done = 0;
    r->name_len = 0;
    r->capture = CAPTURE_NONE;
    Py_CLEAR(r->value);
    Py_CLEAR(r->reason);
    Py_CLEAR(r->content_type);
    Py_CLEAR(r->custom_attributes);
    Py_CLEAR(r->body);
    r->body_size = 0;
}

static int fail_python(Reader *r) {
    r->python_error = 1;
    return HPE_USER;
}

/* Append [at, at + length) to *target (a bytes object or NULL). */
static int append_bytes(PyObject **target, const char *at, size_t length) {
    PyObject *piece = PyBytes_FromStringAndSize(at, (Py_ssize_t)length);
    if (piece == NULL) return -1;
    if (*target == NULL) {
        *target = piece;
        return 0;
    }
    PyBytes_ConcatAndDel(target, piece);
    return *target == NULL ? -1 : 0;
}

static int on_message_begin(llhttp_t *parser) {
    Reader *r = (Reader *)parser->data;
    if (r->done != NULL) {
        /* A second response in the same read as the first: the container answered more than it
         * was asked. The first answer stands; the connection is never reused. */
        r->reusable = 0;
    }
    clear_message(r);
    r->body = PyList_New(0);
    return r->body == NULL ? fail_python(r) : 0;
}

static int on_status(llhttp_t *parser, const char *at, size_t length) {
    Reader *r = (Reader *)parser->data;
    return append_bytes(&r->reason, at, length) < 0 ? fail_python(r) : 0;
}

static int on_header_field(llhttp_t *parser, const char *at, size_t length) {
    Reader *r = (Reader *)parser->data;
    if (r->headers_done) return 0; /* a trailer field: never taken for a header */
    if (r->name_len + (Py_ssize_t)length > NAME_BUFFER) {
        r->name_len = NAME_BUFFER + 1;
    } else {
        memcpy(r->name + r->name_len, at, length);
        r->name_len += (Py_ssize_t)length;
    }
    return 0;
}

static int name_is(const Reader *r, const char *lower) {
    Py_ssize_t size = (Py_ssize_t)strlen(lower);
    if (r->name_len != size) return 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        char c = r->name[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c + ('a' - 'A'));
        if (c != lower[i]) return 0;
    }
    return 1;
}

static int on_header_field_complete(llhttp_t *parser) {
    Reader *r = (Reader *)parser->data;
    if (r->headers_done) return 0;
    if (name_is(r, "content-type")) {
        r->capture = CAPTURE_CONTENT_TYPE;
    } else if (name_is(r, "x-amzn-sagemaker-custom-attributes")) {
        r->capture = CAPTURE_CUSTOM_ATTRIBUTES;
    } else {
        r->capture = CAPTURE_NONE;
    }
    r->name_len = 0;
    return 0;
}

static int on_header_value(llhttp_t *parser, const char *at, size_t length) {
    Reader *r = (Reader *)parser->data;
    if (r->headers_done || r->capture == CAPTURE_NONE) return 0;
    return append_bytes(&r->value, at, length) < 0 ? fail_python(r) : 0;
}

static int on_header_value_complete(llhttp_t *parser) {
    Reader *r = (Reader *)parser->data;
    if (r->headers_done) return 0;
    /* llhttp reports an empty value as an empty span, so it is b"" (as through httptools).
     * The last one wins. */
    if (r->value != NULL) {
        if (r->capture == CAPTURE_CONTENT_TYPE) {
            Py_XSETREF(r->content_type, r->value);
        } else {
            Py_XSETREF(r->custom_attributes, r->value);
        }
        r->value = NULL;
    }
    r->capture = CAPTURE_NONE;
    return 0;
}

static int on_headers_complete(llhttp_t *parser) {
    Reader *r = (Reader *)parser->data;
    r->headers_done = 1;
    /* As httptools: with an upgrade (a 101 with Upgrade), no body; llhttp then stops with
     * HPE_PAUSED_UPGRADE. */
    return parser->upgrade ? 1 : 0;
}

static int on_body(llhttp_t *parser, const char *at, size_t length) {
    Reader *r = (Reader *)parser->data;
    r->got_body = 1;
    r->body_size += (Py_ssize_t)length;
    if (r->body_size > r->max_body) {
        r->too_large = 1;
        return HPE_USER;
    }
    PyObject *chunk;
    if (r->feeding != NULL && at == PyBytes_AS_STRING(r->feeding) &&
        (Py_ssize_t)length == PyBytes_GET_SIZE(r->feeding)) {
        /* The whole read is body (most reads of a large one): keep the bytes object itself
         * instead of copying it. */
        chunk = Py_NewRef(r->feeding);
    } else {
        chunk = PyBytes_FromStringAndSize(at, (Py_ssize_t)length);
        if (chunk == NULL) return fail_python(r);
    }
    int failed = PyList_Append(r->body, chunk);
    Py_DECREF(chunk);
    return failed ? fail_python(r) : 0;
}

static int on_message_complete(llhttp_t *parser) {
    Reader *r = (Reader *)parser->data;
    if (r->done != NULL) return 0; /* a surplus response: dropped with the connection */
    int status = parser->status_code;
    if (status < 200) {
        /* An interim 1xx (100 Continue, 103 Early Hints): skipped, the final answer follows. */
        clear_message(r);
        return 0;
    }
    if (!llhttp_should_keep_alive(parser)) r->reusable = 0;
    if (r->body == NULL && (r->body = PyList_New(0)) == NULL) return fail_python(r);
    PyObject *done = PyTuple_New(8);
    PyObject *status_object = PyLong_FromLong(status);
    PyObject *size_object = PyLong_FromSsize_t(r->body_size);
    PyObject *reason =
        r->reason != NULL ? Py_NewRef(r->reason) : PyBytes_FromStringAndSize(NULL, 0);
    if (done == NULL || status_object == NULL || size_object == NULL || reason == NULL) {
        Py_XDECREF(done);
        Py_XDECREF(status_object);
        Py_XDECREF(size_object);
        Py_XDECREF(reason);
        return fail_python(r);
    }
    /* The tuple takes over one reference to each item. */
    PyTuple_SET_ITEM(done, 0, PyLong_FromLong(COMPLETE)); /* a cached small int: cannot fail */
    PyTuple_SET_ITEM(done, 1, status_object);
    PyTuple_SET_ITEM(done, 2, reason);
    PyTuple_SET_ITEM(done, 3, Py_NewRef(r->content_type ? r->content_type : Py_None));
    PyTuple_SET_ITEM(done, 4, Py_NewRef(r->custom_attributes ? r->custom_attributes : Py_None));
    PyTuple_SET_ITEM(done, 5, Py_NewRef(r->body));
    PyTuple_SET_ITEM(done, 6, size_object);
    PyTuple_SET_ITEM(done, 7, Py_NewRef(Py_True)); /* reusable: set when the feed ends */
    r->done = done;
    clear_message(r);
    return 0;
}

/* The complete response of this feed, with whether the connection may carry another call. */
static PyObject *complete(Reader *r) {
    PyObject *done = r->done;
    r->done = NULL;
    if (!r->reusable) {
        /* Still only ours (refcount 1), so it may be filled in like a new tuple. */
        PyObject *placeholder = PyTuple_GET_ITEM(done, 7);
        PyTuple_SET_ITEM(done, 7, Py_NewRef(Py_False));
        Py_DECREF(placeholder);
    }
    return done;
}

static PyObject *outcome_of(Reader *r, llhttp_errno_t err) {
    if (r->python_error) {
        r->python_error = 0;
        return NULL;
    }
    if (err == HPE_OK) {
        return r->done != NULL ? complete(r) : Py_NewRef(read_more[r->got_body ? 1 : 0]);
    }
    r->reusable = 0;
    /* A complete answer followed by bytes that are not HTTP: the answer stands. */
    if (r->done != NULL) return complete(r);
    PyObject *detail;
    if (err == HPE_PAUSED_UPGRADE && r->parser.upgrade) {
        /* As httptools: only a 101 that names an Upgrade is a switch; llhttp also stops at a
         * bare 101, which then reads as an invalid response (below). */
        detail = PyUnicode_FromString(
            "the container switched protocols (101) although nobody asked it to");
    } else if (r->too_large) {
        detail = PyUnicode_FromFormat("the response is larger than the %zd-byte limit",
                                      r->max_body);
    } else {
        const char *reason = llhttp_get_error_reason(&r->parser);
        detail = PyUnicode_FromFormat("invalid HTTP response (%s)",
                                      reason != NULL ? reason : llhttp_errno_name(err));
    }
    if (detail == NULL) return NULL;
    return Py_BuildValue("(iN)", FAILED, detail);
}

static PyObject *Reader_feed(Reader *r, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    Py_CLEAR(r->done);
    r->got_body = 0;
    r->feeding = PyBytes_CheckExact(data) ? data : NULL;
    llhttp_errno_t err = llhttp_execute(&r->parser, (const char *)view.buf, (size_t)view.len);
    r->feeding = NULL;
    PyBuffer_Release(&view);
    return outcome_of(r, err);
}

static PyObject *Reader_finish(Reader *r, PyObject *Py_UNUSED(ignored)) {
    Py_CLEAR(r->done);
    r->got_body = 0;
    llhttp_errno_t err = llhttp_finish(&r->parser);
    if (err == HPE_INVALID_EOF_STATE) {
        /* EOF in the middle of a response: not an answer (the caller says what happened). */
        return Py_NewRef(read_more[0]);
    }
    return outcome_of(r, err);
}

static int Reader_init(Reader *r, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"max_body", NULL};
    Py_ssize_t max_body;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "n", keywords, &max_body)) return -1;
    r->max_body = max_body;
    clear_message(r);
    Py_CLEAR(r->done);
    r->reusable = 1;
    r->too_large = 0;
    r->python_error = 0;
    llhttp_init(&r->parser, HTTP_RESPONSE, &reader_settings);
    r->parser.data = r;
    return 0;
}

static void Reader_dealloc(Reader *r) {
    clear_message(r);
    Py_CLEAR(r->done);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMethodDef Reader_methods[] = {
    {"feed", (PyCFunction)Reader_feed, METH_O, "Parse the next bytes read (see response.py)."},
    {"finish", (PyCFunction)Reader_finish, METH_NOARGS,
     "The connection reached EOF: COMPLETE when that ended a close-delimited response."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mce_router.dataplane._llresponse.ResponseReader",
    .tp_doc = "Reads a container's HTTP/1.1 responses on one connection (llhttp, in C).",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
};

static struct PyModuleDef llresponse_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mce_router.dataplane._llresponse",
    .m_doc = "The container-response reader of the hot path, on llhttp in C (see response.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__llresponse(void) {
    llhttp_settings_init(&reader_settings);
    reader_settings.on_message_begin = on_message_begin;
    reader_settings.on_status = on_status;
    reader_settings.on_header_field = on_header_field;
    reader_settings.on_header_field_complete = on_header_field_complete;
    reader_settings.on_header_value = on_header_value;
    reader_settings.on_header_value_complete = on_header_value_complete;
    reader_settings.on_headers_complete = on_headers_complete;
    reader_settings.on_body = on_body;
    reader_settings.on_message_complete = on_message_complete;
    for (int i = 0; i < 2; i++) {
        read_more[i] = Py_BuildValue("(iO)", READ_MORE, i ? Py_True : Py_False);
        if (read_more[i] == NULL) return NULL;
    }
    if (PyType_Ready(&ReaderType) < 0) return NULL;
    PyObject *module = PyModule_Create(&llresponse_module);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "ResponseReader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
