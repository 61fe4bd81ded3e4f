from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, status
from sqlalchemy import select

from activeseg.api.deps import Admin, CurrentUser, DbDep
from activeseg.api.errors import error_responses
from activeseg.api.schemas import (
    NewToken,
    Page,
    RowId,
    TokenCreate,
    TokenPublic,
    UserCreate,
    UserPublic,
)
from activeseg.core.services import auth
from activeseg.core.tables import ApiToken, User

router = APIRouter(tags=["users"], responses=error_responses(403, 404, 409))


@router.get("/users/me", response_model=UserPublic)
def me(user: CurrentUser) -> User:
    return user


@router.post("/users", response_model=NewToken, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, _: Admin, db: DbDep) -> NewToken:
    """Create a user and their first API token (admin only)."""
    with db.session() as s:
        user = auth.create_user(s, body.name, body.role)
        token, secret = auth.create_token(s, user)
        return NewToken(
            user=UserPublic.model_validate(user),
            token=TokenPublic.model_validate(token),
            secret=secret,
        )


@router.get("/users", response_model=Page[UserPublic])
def list_users(_: Admin, db: DbDep) -> Page[UserPublic]:
    with db.session() as s:
        rows = s.scalars(select(User).order_by(User.id)).all()
        return Page(data=[UserPublic.model_validate(u) for u in rows], count=len(rows))


@router.post("/tokens", response_model=NewToken, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, user: CurrentUser, db: DbDep) -> NewToken:
    """A new token for yourself (e.g. one per machine), optionally expiring."""
    with db.session() as s:
        me = s.get(User, user.id)
        assert me is not None
        expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
        token, secret = auth.create_token(s, me, expires)
        return NewToken(
            user=UserPublic.model_validate(me),
            token=TokenPublic.model_validate(token),
            secret=secret,
        )


@router.get("/tokens", response_model=Page[TokenPublic])
def list_tokens(user: CurrentUser, db: DbDep) -> Page[TokenPublic]:
    with db.session() as s:
        rows = s.scalars(select(ApiToken).where(ApiToken.user_id == user.id)).all()
        return Page(data=[TokenPublic.model_validate(t) for t in rows], count=len(rows))


@router.delete("/tokens/{token_id}", response_model=TokenPublic)
def revoke_token(token_id: RowId, user: CurrentUser, db: DbDep) -> ApiToken:
    with db.session() as s:
        return auth.revoke_token(s, token_id, user)
