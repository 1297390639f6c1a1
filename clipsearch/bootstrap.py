"""How every service starts: one settings object from the environment (and flags), logging, CPUs.

Each service has one settings class extending `ServiceSettings`, read once at start:
environment variables with the service's prefix (`ENCODER_`, `GATEWAY_`, `INDEXER_`),
overridden by command-line flags of the same names in kebab case (`--batch-size`).
An empty variable counts as unset (compose files and `.env` templates leave them so).
`--help` lists every setting with its default and its environment variable.

`run_service` is the whole of a service's `__main__`: settings (a mistake exits 2 with a
message naming the setting, no traceback), logging, CPU pinning where the service has
`cpus`, then the service; a `UserError` (what the user can fix: a missing file, a port
in use) is logged as one line and exits 1.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    CliApp,
    CliSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from clipsearch.logs import LogFormat, configure_logging, parse_level

S = TypeVar("S", bound="ServiceSettings")
log = logging.getLogger(__name__)


class ServiceSettings(BaseSettings):
    """Settings every service shares; subclasses set `env_prefix`."""

    model_config = SettingsConfigDict(
        extra="ignore",
        env_ignore_empty=True,
        # The text under each field is its description in --help.
        use_attribute_docstrings=True,
        cli_kebab_case=True,
        cli_implicit_flags=True,  # bool settings become --flag / --no-flag
        cli_show_env_vars=True,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_exit_on_error=False,  # bad flags raise SettingsError, reported like bad settings
    )

    # Unprefixed variables that settings fall back to (setting -> variable), such as the MNIST_DIR
    # that training and the tests share; the prefixed variable and the flag win.
    env_fallbacks: ClassVar[dict[str, str]] = {}

    log_level: str = "INFO"
    """debug, info, warning, error or critical."""
    log_format: LogFormat = "text"
    """text (one readable line per record) or json (one JSON object per line, for log collectors)."""

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        parse_level(value)  # ValueError names the choices
        return value.strip().upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _FallbackEnvironment(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )


class _FallbackEnvironment(PydanticBaseSettingsSource):
    """The `env_fallbacks` of a settings class, from the environment (empty means unset)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = getattr(self.settings_cls, "env_fallbacks", {}).get(field_name)
        return (os.environ.get(variable) or None) if variable else None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                values[name] = value
        return values


def load_settings(settings_cls: type[S], argv: Sequence[str] | None = None, *, prog: str | None = None) -> S:
    """The settings from the environment, overridden by flags in `argv` (default: none).

    `--help` prints the settings and exits. Raises ValidationError or SettingsError (bad flags).
    """
    source: CliSettingsSource[S] = CliSettingsSource(settings_cls, cli_prog_name=prog)
    return CliApp.run(settings_cls, cli_args=list(argv or ()), cli_settings_source=source)


def describe_settings_error(settings_cls: type[ServiceSettings], exc: ValidationError) -> str:
    """One line per problem, naming the setting's flag and environment variable."""
    prefix = str(settings_cls.model_config.get("env_prefix", ""))
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        where = (
            f" (--{name.replace('_', '-')}, {prefix}{name.upper()})"
            if name in settings_cls.model_fields
            else ""
        )
        lines.append(f"  {name}{where}: {error['msg']}")
    return "\n".join(lines)


class UserError(Exception):
    """A failure the user can fix, with a message that says how; the service exits 1 without a traceback."""


def run_service(
    name: str,
    settings_cls: type[S],
    serve: Callable[[S], int | None],
    *,
    argv: Sequence[str] | None = None,
    prog: str | None = None,
) -> int:
    """Start a service with the settings from the environment and `argv` (default: sys.argv[1:]);
    returns its exit status."""
    try:
        settings = load_settings(settings_cls, sys.argv[1:] if argv is None else argv, prog=prog)
    except ValidationError as exc:
        print(f"{name}: invalid settings:\n{describe_settings_error(settings_cls, exc)}", file=sys.stderr)
        return 2
    except SettingsError as exc:
        print(f"{name}: {exc} (see --help)", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    cpus = getattr(settings, "cpus", None)
    if cpus:  # checked with the settings: a list this machine cannot give is refused there
        from clipsearch.affinity import pin_process

        log.info("%s running on CPUs %s", name, sorted(pin_process(cpus)))
    try:
        return serve(settings) or 0
    except UserError as exc:
        logging.getLogger(name).error("%s", exc)
        return 1
