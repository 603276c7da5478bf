"""STS ``GetCallerIdentity`` on the admin port, so ``boto3.client("sts", endpoint_url=ADMIN_URL)``
(or ``AWS_ENDPOINT_URL_STS``) answers who the caller is: the SageMaker Python SDK asks it for
``Session().account_id()`` and ``default_bucket()``.

STS speaks AWS's query protocol (botocore's ``sts`` model): ``POST /`` with a form-encoded body
``Action=GetCallerIdentity&Version=2011-06-15``, an XML answer, errors as ``<ErrorResponse>``
with STS's codes (:func:`mce_router.errors.wire_error`, plane ``sts``). With ``auth.mode:
sigv4`` the request must be signed for the service ``sts`` with one of the configured keys; the
answer is that key's principal (``Arn``), the account in it (``Account``) and the access key id
as ``UserId`` (the router has no IAM unique ids). Nothing is authorized: AWS answers
GetCallerIdentity even when a policy denies ``sts:GetCallerIdentity``. With ``auth.mode: none``
the answer is the configured account's root (``arn:aws:iam::{account_id}:root``, ``UserId`` the
account id, as AWS answers root credentials).
"""

from __future__ import annotations

import logging
import uuid
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from aiohttp import web

from ..errors import RouterError, SerializationError, UnknownTarget, ValidationError, wire_error
from ..security import Credential, Guard

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-www-form-urlencoded"
VERSION = "2011-06-15"
_NAMESPACE = f"https://sts.amazonaws.com/doc/{VERSION}/"


def is_sts_request(request: web.Request) -> bool:
    """A query-protocol request (form body, no ``X-Amz-Target``) rather than SageMaker's JSON."""
    return "X-Amz-Target" not in request.headers and request.content_type == CONTENT_TYPE


class StsApi:
    """Serves GetCallerIdentity; :meth:`handle` is the handler of form-encoded ``POST /``."""

    def __init__(self, guard: Guard | None, account_id: str) -> None:
        self._guard = guard
        self._account_id = account_id

    async def handle(self, request: web.Request) -> web.Response:
        request_id = str(uuid.uuid4())
        try:
            raw = await request.read()
            credential = None
            if self._guard is not None:
                path, _, query = request.raw_path.partition("?")
                credential = self._guard.authenticate(
                    request.method,
                    path.encode(),
                    query.encode(),
                    request.raw_headers,
                    raw,
                    sts=True,
                )
            _check_action(raw)
            result = self._identity(credential)
        except Exception as exc:
            if not isinstance(exc, RouterError):
                log.exception("STS call failed")
            error = wire_error(exc, "sts")
            kind = "Sender" if error.status < 500 else "Receiver"
            return _xml(
                error.status,
                f'<ErrorResponse xmlns="{_NAMESPACE}"><Error><Type>{kind}</Type>'
                f"<Code>{escape(error.code)}</Code><Message>{escape(error.message)}</Message>"
                f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>",
                request_id,
            )
        members = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in result)
        return _xml(
            200,
            f'<GetCallerIdentityResponse xmlns="{_NAMESPACE}"><GetCallerIdentityResult>'
            f"{members}</GetCallerIdentityResult><ResponseMetadata><RequestId>{request_id}"
            "</RequestId></ResponseMetadata></GetCallerIdentityResponse>",
            request_id,
        )

    def _identity(self, credential: Credential | None) -> tuple[tuple[str, str], ...]:
        if credential is None:
            account = self._account_id
            return (
                ("UserId", account),
                ("Account", account),
                ("Arn", f"arn:aws:iam::{account}:root"),
            )
        principal = credential.principal
        parts = principal.split(":", 5)
        if len(parts) == 6 and parts[0] == "arn" and parts[4]:
            account, arn = parts[4], principal
        else:  # a principal that is not an ARN: a user of the router's account
            account = self._account_id
            arn = f"arn:aws:iam::{account}:user/{principal}"
        return (("UserId", credential.access_key_id), ("Account", account), ("Arn", arn))


def _check_action(raw: bytes) -> None:
    try:
        form = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw))
    except (UnicodeDecodeError, ValueError):
        raise SerializationError(
            f"The request body is not a form-encoded query ({CONTENT_TYPE})."
        ) from None
    action = form.get("Action", [""])[0]
    if action != "GetCallerIdentity":
        raise UnknownTarget(
            f"Could not find operation {action!r} for version {VERSION}: the router serves STS "
            "GetCallerIdentity only."
            if action
            else "The request must contain the parameter Action (the router serves STS "
            "GetCallerIdentity)."
        )
    version = form.get("Version", [VERSION])[0]
    if version != VERSION:
        raise ValidationError(
            f"Version {version!r} is not {VERSION}, the STS API version this router speaks."
        )


def _xml(status: int, body: str, request_id: str) -> web.Response:
    return web.Response(
        status=status,
        body=body.encode(),
        headers={"Content-Type": "text/xml", "x-amzn-RequestId": request_id},
    )
