"""Who am I: `GET /api/whoami-v2`."""

from fastapi import APIRouter, Request

from cove.server import errors
from cove.server.deps import iso, principal

router = APIRouter()


@router.get("/api/whoami-v2")
def whoami(request: Request) -> dict:
    who = principal(request)
    if who is None:
        raise errors.unauthorized("You must be authenticated: pass a token in Authorization.")
    return {
        "type": "user",
        "id": str(who.account.id),
        "name": who.name,
        "fullname": who.account.fullname or who.name,
        "email": who.account.email,
        "emailVerified": who.account.email is not None,
        "isPro": False,
        "orgs": [{"type": "org", "name": o, "fullname": o} for o in who.orgs],
        "auth": {
            "type": "access_token",
            "accessToken": {
                "displayName": who.token_name,
                "role": who.role,
                "createdAt": iso(who.account.created_at),
            },
        },
    }


@router.api_route("/api/telemetry/{rest:path}", methods=["GET", "HEAD", "POST"])
def telemetry(rest: str) -> dict:
    return {}  # fire-and-forget pings from the clients; nothing is recorded
