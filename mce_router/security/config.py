"""The ``auth:`` section of the router config.

```yaml
auth:
  mode: sigv4                  # or none (explicit opt-out; warned about off loopback)
  region: us-east-1            # default: the router's region
  account_id: "000000000000"   # default: the router's account
  audit: false                 # one JSON line per decision on the mce_router.audit logger
  reject_replays: false        # see mce_router.security.sigv4
  max_skew_seconds: 300
  credentials:
    - access_key_id: AKIAEXAMPLE
      secret_access_key_env: MCE_ROUTER_SECRET_ALICE   # or secret_access_key_file: alice.key
      principal: arn:aws:iam::000000000000:user/alice  # default: ...:user/<access key id>
      policies:
        - {file: policies/alice.json}                  # relative to the config file
        - {Version: "2012-10-17", Statement: [...]}    # or inline
```

Secrets come from exactly one of ``secret_access_key`` (inline), ``secret_access_key_env``
(an environment variable) or ``secret_access_key_file`` (a file, relative to the config file,
surrounding whitespace stripped); ``session_token`` likewise, optionally. Errors name the
field, never a secret's value.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from ..errors import ConfigError, refuse_unknown_keys
from .errors import PolicyError
from .policy import KNOWN_CONTEXT_KEYS, PolicyDocument
from .sigv4 import DEFAULT_MAX_SKEW_SECONDS, Credential

log = logging.getLogger("mce_router.security")

AuthMode = Literal["none", "sigv4"]
_SECTION: Final = "config.auth"
_AUTH_KEYS: Final = frozenset(
    {
        "mode",
        "region",
        "account_id",
        "credentials",
        "audit",
        "reject_replays",
        "max_skew_seconds",
    }
)
_CREDENTIAL_KEYS: Final = frozenset(
    {
        "access_key_id",
        "secret_access_key",
        "secret_access_key_env",
        "secret_access_key_file",
        "session_token",
        "session_token_env",
        "session_token_file",
        "principal",
        "policies",
    }
)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    mode: AuthMode = "none"
    region: str = "us-east-1"
    account_id: str = "000000000000"
    credentials: tuple[Credential, ...] = ()
    audit: bool = False
    reject_replays: bool = False
    max_skew_seconds: float = DEFAULT_MAX_SKEW_SECONDS
    #: False when the config has no ``auth:`` section at all (``mode`` is then "none").
    explicit: bool = False

    @property
    def enabled(self) -> bool:
        return self.mode == "sigv4"

    def insecure_listener_warning(self, host: str) -> str | None:
        """The warning to log when authentication is off on a listener reachable from other
        machines (anything but a loopback address or ``localhost``), else None."""
        if self.enabled or _is_loopback(host):
            return None
        return (
            f"authentication is off (auth.mode: none) and the router listens on {host or '*'}: "
            "anyone who can reach it can invoke and manage endpoints"
        )

    @classmethod
    def from_mapping(
        cls,
        raw: Mapping[str, Any] | None,
        base_dir: Path | None = None,
        *,
        default_region: str = "us-east-1",
        default_account_id: str = "000000000000",
        environ: Mapping[str, str] | None = None,
    ) -> AuthConfig:
        """Parse the ``auth:`` mapping (None: no section, authentication off). Relative files
        resolve against ``base_dir`` (the config file's folder); ``environ`` defaults to
        :data:`os.environ`. Raises :class:`ConfigError` naming the field."""
        if raw is None:
            return cls(region=default_region, account_id=default_account_id)
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{_SECTION}: must be a mapping")
        refuse_unknown_keys(raw, _AUTH_KEYS, _SECTION)
        mode = raw.get("mode")
        if mode not in ("none", "sigv4"):
            raise ConfigError(f"{_SECTION}.mode: must be 'sigv4' or 'none', got {mode!r}")
        region = _string(raw.get("region", default_region), f"{_SECTION}.region")
        account_id = _string(raw.get("account_id", default_account_id), f"{_SECTION}.account_id")
        audit = _bool(raw.get("audit", False), f"{_SECTION}.audit")
        reject_replays = _bool(raw.get("reject_replays", False), f"{_SECTION}.reject_replays")
        skew = raw.get("max_skew_seconds", DEFAULT_MAX_SKEW_SECONDS)
        if isinstance(skew, bool) or not isinstance(skew, int | float) or not 0 < skew <= 3600:
            raise ConfigError(f"{_SECTION}.max_skew_seconds: must be a number in (0, 3600]")
        base = base_dir or Path.cwd()
        env = os.environ if environ is None else environ
        raw_credentials = raw.get("credentials") or []
        if not isinstance(raw_credentials, list):
            raise ConfigError(f"{_SECTION}.credentials: must be a list")
        if mode == "none" and raw_credentials:
            raise ConfigError(
                f"{_SECTION}.credentials: given while mode is 'none'; set mode: sigv4 to use them"
            )
        if mode == "sigv4" and not raw_credentials:
            raise ConfigError(f"{_SECTION}.credentials: mode sigv4 needs at least one credential")
        credentials: list[Credential] = []
        seen: set[str] = set()
        for index, item in enumerate(raw_credentials):
            credential = _parse_credential(
                item, f"{_SECTION}.credentials[{index}]", base, env, account_id
            )
            if credential.access_key_id in seen:
                raise ConfigError(
                    f"{_SECTION}.credentials[{index}].access_key_id: "
                    f"{credential.access_key_id!r} appears twice"
                )
            seen.add(credential.access_key_id)
            credentials.append(credential)
        return cls(
            mode=mode,
            region=region,
            account_id=account_id,
            credentials=tuple(credentials),
            audit=audit,
            reject_replays=reject_replays,
            max_skew_seconds=float(skew),
            explicit=True,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a non-empty string")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: must be true or false")
    return value


def _secret(
    raw: Mapping[str, Any],
    name: str,
    where: str,
    base: Path,
    env: Mapping[str, str],
    *,
    required: bool,
) -> str | None:
    sources = [key for key in (name, f"{name}_env", f"{name}_file") if key in raw]
    if len(sources) > 1:
        raise ConfigError(f"{where}: give only one of {sources}")
    if not sources:
        if required:
            raise ConfigError(
                f"{where}: needs {name}, {name}_env (an environment variable) or "
                f"{name}_file (a file)"
            )
        return None
    source = sources[0]
    value = raw[source]
    here = f"{where}.{source}"
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{here}: must be a non-empty string")
    if source.endswith("_env"):
        secret = env.get(value)
        if not secret:
            raise ConfigError(f"{here}: environment variable {value} is not set or is empty")
        return secret
    if source.endswith("_file"):
        path = base / value
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{here}: cannot read {path}: {exc.strerror}") from exc
        if not secret:
            raise ConfigError(f"{here}: {path} is empty")
        return secret
    return value


def _parse_credential(
    raw: Any, where: str, base: Path, env: Mapping[str, str], account_id: str
) -> Credential:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping")
    refuse_unknown_keys(raw, _CREDENTIAL_KEYS, where)
    access_key_id = raw.get("access_key_id")
    if (
        not isinstance(access_key_id, str)
        or not access_key_id
        or not access_key_id.isascii()
        or any(c in access_key_id for c in "/,= \t")
    ):
        raise ConfigError(
            f"{where}.access_key_id: must be a non-empty ASCII string without '/', ',', '=' or "
            "whitespace"
        )
    secret = _secret(raw, "secret_access_key", where, base, env, required=True)
    assert secret is not None
    token = _secret(raw, "session_token", where, base, env, required=False)
    principal = raw.get("principal", f"arn:aws:iam::{account_id}:user/{access_key_id}")
    principal = _string(principal, f"{where}.principal")
    raw_policies = raw.get("policies") or []
    if not isinstance(raw_policies, list):
        raise ConfigError(f"{where}.policies: must be a list of policy documents or {{file: path}}")
    policies = tuple(
        _parse_policy(item, f"{where}.policies[{i}]", base) for i, item in enumerate(raw_policies)
    )
    if not policies:
        log.warning("%s (%s) has no policies: every request it signs is denied", where, principal)
    for policy in policies:
        unknown_keys = sorted(policy.condition_keys - KNOWN_CONTEXT_KEYS)
        if unknown_keys:
            log.warning(
                "%s tests condition keys the router never sets %s: they are always absent "
                "(ordinary operators false, negated operators and ...IfExists true)",
                policy.name,
                unknown_keys,
            )
    return Credential(access_key_id, secret, principal, policies, session_token=token)


def load_policy_file(
    path: Path, name: str | None = None, *, where: str | None = None
) -> PolicyDocument:
    """Read and parse a policy file: JSON, or YAML when it ends in .yaml/.yml. ``name`` labels
    the policy in errors and statement references (default: the path); ``where`` is the config
    field to blame when the file cannot be read."""
    label = name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where or label}: cannot read {path}: {exc.strerror}") from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            return PolicyDocument.parse(yaml.safe_load(text), name=label)
        except yaml.YAMLError as exc:
            raise PolicyError(f"{label}: not valid YAML: {exc}") from exc
    return PolicyDocument.parse(text, name=label)


def _parse_policy(raw: Any, where: str, base: Path) -> PolicyDocument:
    if isinstance(raw, Mapping) and set(raw) == {"file"}:
        return load_policy_file(
            base / str(raw["file"]), f"{where} ({raw['file']})", where=f"{where}.file"
        )
    if isinstance(raw, Mapping | str):
        return PolicyDocument.parse(raw, name=where)
    raise ConfigError(f"{where}: must be a policy document, its JSON text, or {{file: path}}")
