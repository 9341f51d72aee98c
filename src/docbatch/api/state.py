"""Process-wide objects the routers reach through `request.app.state`."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from docbatch.auth.tokens import TokenIssuer, TokenVerifier
from docbatch.core.settings import Settings
from docbatch.services.records import InlinePayloadBudget
from docbatch.storage.blobs import BlobStore
from docbatch.store.database import Database


@dataclass(slots=True)
class AppState:
    settings: Settings
    database: Database
    blobs: BlobStore
    verifier: TokenVerifier
    issuer: TokenIssuer | None
    inline_budget: InlinePayloadBudget


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.docbatch
    return state
