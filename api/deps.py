"""Dependencies (Annotated aliases) of the route handlers."""
from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from storage.artifacts import ArtifactStore
from storage.db import get_sessionmaker
from storage.settings import ServiceSettings

from .services import AsyncPgJobReader, JobReader


def _settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


def _session(request: Request) -> Iterator[Session]:
    s: ServiceSettings = request.app.state.settings
    with get_sessionmaker(s.db_url, s.db_pool_size)() as session:
        yield session


def _tenant(request: Request) -> str:
    # Until authentication exists every request belongs to the default tenant.
    return request.app.state.settings.default_tenant


def _store(request: Request) -> ArtifactStore:
    return request.app.state.store


async def _reader(request: Request):
    return request.app.state.reader


async def _tenant_async(request: Request) -> str:
    return request.app.state.settings.default_tenant


SettingsDep = Annotated[ServiceSettings, Depends(_settings)]
SessionDep = Annotated[Session, Depends(_session)]
TenantDep = Annotated[str, Depends(_tenant)]
StoreDep = Annotated[ArtifactStore, Depends(_store)]
ReaderDep = Annotated[JobReader | AsyncPgJobReader, Depends(_reader)]
# async twin of TenantDep for async handlers (no threadpool hop)
TenantAsyncDep = Annotated[str, Depends(_tenant_async)]
