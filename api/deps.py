"""Dependencies (Annotated aliases) of the route handlers."""
from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from storage.artifacts import ArtifactStore
from storage.db import get_sessionmaker
from storage.settings import ServiceSettings

from .auth import authenticate
from .services import AsyncPgJobReader, JobReader


def _settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def _session(request: Request) -> Iterator[Session]:
    s: ServiceSettings = request.app.state.settings
    with get_sessionmaker(s.db_url, s.db_pool_size)() as session:
        yield session


def _store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def _reader(request: Request):
    return request.app.state.reader


SettingsDep = Annotated[ServiceSettings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(_session)]
# The authenticated tenant (api.auth: 401 without a valid key). ONE dependency scopes every query.
TenantDep = Annotated[str, Depends(authenticate)]
StoreDep = Annotated[ArtifactStore, Depends(_store)]
ReaderDep = Annotated[JobReader | AsyncPgJobReader, Depends(_reader)]
# the same dependency, under the name async handlers use
TenantAsyncDep = TenantDep
