"""Path parameters hold no control characters: a route that takes one refuses them with a 422 naming the
parameter (the service's error shape), before its handler runs.

Starlette matches a route's path with a regex that ends in `$`, which also matches before a final line feed, and
its `path` convertor (`.*`) stops at a line feed: `DELETE /v1/models/gpt-4o%0A` read the name `gpt-4o`, and
`/v1/models/gpt%0A4o` matched no route (a 404). So a parameter that spans `/` is declared `{name:fullpath}`
(every character to the end, a line feed too: the value has it, and is refused), and `CheckedRoute`, the route
class of the service's routers, checks every path parameter's value. It refuses `{…:path}`, which would slip
past the check. A route without path parameters (`/v1/route`, `/v1/feedback`: the hot paths) is a plain
`APIRoute`: no request to one does any more work.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response

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


def control_problem(value: str) -> str | None:
    """Why `value`, a path parameter, is refused (a control character in it), or None."""
    found = CONTROL.search(value)
    if found is None:
        return None
    return f"holds the control character U+{ord(found.group()):04X}: a path parameter has none"


class CheckedRoute(APIRoute):
    """An `APIRoute` whose path parameters are refused (422, naming the parameter) when one holds a control
    character; a route without path parameters is a plain `APIRoute`."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if re.search(r"\{[^}]*:path\}", path):
            raise ValueError(f"{path}: declare a parameter that spans / as {{name:fullpath}} (see service/paths.py)")
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self.param_convertors:
            return handler

        async def checked(request: Request) -> Response:
            for name, value in request.path_params.items():
                problem = control_problem(value) if isinstance(value, str) else None
                if problem is not None:
                    raise InvalidField(name, problem)
            return await handler(request)

        return checked
