"""Who am I: `GET /api/whoami-v2`; and the clients' telemetry pings."""

from fastapi import APIRouter, Request

from cove.server import errors
from cove.server.deps import iso, principal
from cove.server.openapi import NO_TOKEN, error_responses

router = APIRouter()


@router.get("/api/whoami-v2", responses=error_responses(401))
def whoami(request: Request) -> dict:
    """The token's account, organisations and role."""
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


def telemetry(rest: str) -> dict:
    """Fire-and-forget pings from the clients: answered, nothing recorded."""
    return {}


for _method in ("GET", "HEAD", "POST"):  # one route per method: one operation id each
    router.add_api_route(
        "/api/telemetry/{rest:path}", telemetry, methods=[_method],
        name=f"telemetry_{_method.lower()}", responses=error_responses(),
        openapi_extra=NO_TOKEN,
    )
