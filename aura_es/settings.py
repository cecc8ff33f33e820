"""Where the database and NATS are: flags, then environment, then the embedded services."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from aura_es.dsn import check_nats_url, parse_database_url
from aura_es.errors import ConfigurationError

STATE_FILE = "services.json"


class Settings(BaseSettings):
    """``AURA_ES_DATABASE_URL``, ``AURA_ES_NATS_URL`` and ``AURA_ES_DATA_DIR``."""

    model_config = SettingsConfigDict(env_prefix="AURA_ES_", extra="ignore")

    database_url: str | None = None
    nats_url: str | None = None
    data_dir: Path = Path(".aura")

    def embedded_state(self) -> dict[str, str]:
        path = self.data_dir / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ConfigurationError(f"{path} is unreadable: {e}") from None
        return {k: str(v) for k, v in data.items()}

    def resolved_database_url(self) -> str:
        url = self.database_url or self.embedded_state().get("database_url")
        if not url:
            raise ConfigurationError(
                "no database configured: run `aura-es up` for the embedded one "
                "or set AURA_ES_DATABASE_URL"
            )
        parse_database_url(url)
        return url

    def resolved_nats_url(self) -> str:
        url = self.nats_url or self.embedded_state().get("nats_url")
        if not url:
            raise ConfigurationError(
                "no NATS server configured: run `aura-es up` for the embedded one "
                "or set AURA_ES_NATS_URL"
            )
        return check_nats_url(url)
