"""Paths hold no control characters: a route that takes a path parameter refuses one in it (or an empty value) with
a 422 naming the parameter (the service's error shape), before its handler runs; a path whose fixed part has one
matches no route (a 404).

Starlette matches a route's path with a regex that ends in `$`, which also matches before a final line feed, and
its `path` convertor (`.*`) stops at a line feed: `DELETE /v1/models/gpt-4o%0A` read the name `gpt-4o`,
`/v1/models/gpt%0A4o` matched no route (a 404), and `GET /v1/stats%0A` was `GET /v1/stats`. So a parameter that
spans `/` is declared `{name:fullpath}` (every character to the end, a line feed too: the value has it, and is
refused), and `CheckedRoute`, the route class of the service's routers, checks every path parameter's value and
matches no path whose final line feed no parameter took. It refuses `{…:path}`, which would slip past the check.
A route without path parameters (`/v1/route`, `/v1/feedback`) gets FastAPI's own handler: `HotPaths` answers
those two before any route is matched, and a request to one does no more work. `end_exactly` gives the app's
own routes (`/openapi.json`, `/docs`) a regex that ends at the end of the path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from .exceptions import InvalidField

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""A control character: C0, DEL or C1."""


class FullPathConvertor(Convertor[str]):
    """`{name:fullpath}`: the rest of the path, `/` and every other character included (`path` stops at a line
    feed, and the route's `$` then matches before it)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fullpath", FullPathConvertor())


def parameter_problem(value: str) -> str | None:
    """Why `value`, a path parameter, is refused (empty, which only `{…:fullpath}` takes: `GET /v1/models/`; a
    control character in it), or None. The route's pattern would refuse both too, its message a regex."""
    if not value:
        return "is empty: a path parameter has a value"
    found = CONTROL.search(value)
    if found is None:
        return None
    return f"holds the control character U+{ord(found.group()):04X}: a path parameter has none"


class CheckedRoute(APIRoute):
    """An `APIRoute` whose path parameters are refused (422, naming the parameter) when one is empty or holds a
    control character, and which matches no path ending in a line feed that no parameter took (`matches`, every route);
    a route without path parameters keeps FastAPI's handler (`get_route_handler` adds no check)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if re.search(r"\{[^}]*:path\}", path):
            raise ValueError(f"{path}: declare a parameter that spans / as {{name:fullpath}} (see service/paths.py)")
        super().__init__(path, endpoint, **kwargs)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        """FastAPI's match, but none when the path ends in a line feed that no parameter took (the route's `$`
        matched before it: `/v1/stats%0A` is not `/v1/stats`)."""
        match, child_scope = super().matches(scope)
        if match is not Match.NONE and scope["path"].endswith("\n") and not any(
            isinstance(value, str) and value.endswith("\n") for value in child_scope.get("path_params", {}).values()
        ):
            return Match.NONE, {}
        return match, child_scope

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self.param_convertors:
            return handler

        async def checked(request: Request) -> Response:
            for name, value in request.path_params.items():
                problem = parameter_problem(value) if isinstance(value, str) else None
                if problem is not None:
                    raise InvalidField(name, problem)
            return await handler(request)

        return checked


def end_exactly(routes: list[BaseRoute]) -> None:
    """Give each of `routes` that is not a `CheckedRoute` (the app's own: `/openapi.json`, `/docs`, the dashboard's
    static files) a path regex that ends at the end of the path (`\\Z`), not before a final line feed (`$`)."""
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if not isinstance(route, CheckedRoute) and isinstance(regex, re.Pattern) and regex.pattern.endswith("$"):
            route.path_regex = re.compile(regex.pattern[:-1] + r"\Z")  # type: ignore[attr-defined]
