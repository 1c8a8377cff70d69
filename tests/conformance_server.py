"""An MCP server built with the official `mcp` SDK that offers everything the official MCP conformance suite
(@modelcontextprotocol/conformance, its server scenarios) asks of a server: the fixed tools, resources, prompts,
logging, completion, resumable SSE streams and DNS rebinding protection.

It exists so the suite can be pointed at a known-good server, both directly and through a Tollbooth gateway in
front of it: whatever fails through the gateway but passes directly is the gateway's fault. Streamable HTTP,
stateful sessions, SSE answers, an in-memory event store (so a closed stream can be resumed with Last-Event-ID)
and a retry interval, on `/mcp`.

Built on the SDK's low-level `Server` rather than `MCPServer`: the suite needs a tool whose input schema is
listed verbatim (JSON Schema 2020-12 keywords included), resource subscriptions and `logging/setLevel`, none of
which the high-level decorators expose.

`start_conformance_server()` serves it on a free loopback port in a thread; `python conformance_server.py PORT`
serves it in the foreground for manual runs of the suite.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from itertools import count
from typing import Any, TypeVar

import anyio
import mcp_types as types
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from mcp.shared.message import ServerMessageMetadata
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from support import free_port, serve_in_thread

MCP_PATH = "/mcp"
# What the suite's reference server suggests; the suite's own clients reconnect at once, so it costs no time.
RETRY_INTERVAL_MS = 5000
# The event store outlives every session: bounded, so a long run of the suite cannot grow it without limit.
MAX_STORED_EVENTS = 10_000

# A 1x1 red PNG and a minimal WAV: the suite checks only that image/audio content arrives, not what it shows.
PNG_BASE64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_BASE64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="

Ctx = ServerRequestContext[Any, Any]
ResultT = TypeVar("ResultT", bound=BaseModel)
ToolFn = Callable[[Ctx, dict[str, Any]], Awaitable[types.CallToolResult]]
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
LOG_LEVELS: tuple[types.LoggingLevel, ...] = (
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
)


# ---------------------------------------------------------------------------------------------------------------
# Resumability


class InMemoryEventStore(EventStore):
    """Every SSE event the transport sends, so a client that lost a stream can ask for what came after its
    Last-Event-ID. One store serves all sessions (the SDK hands the same instance to each session's transport),
    so event ids come from one global counter and are unique across sessions.

    The SDK names a POST's stream by the JSON-RPC request id alone, and tells the store nothing of the session:
    two sessions with the same request id in flight at once would share a stream here, and a resume could
    replay the other's events. The suite runs its sessions one after another, so it never meets that."""

    def __init__(self, max_events: int = MAX_STORED_EVENTS) -> None:
        self._max_events = max_events
        self._sequence = count(1)
        # Insertion-ordered: replay walks it in the order events were sent.
        self._events: dict[int, tuple[StreamId, types.JSONRPCMessage | None]] = {}

    async def store_event(self, stream_id: StreamId, message: types.JSONRPCMessage | None) -> EventId:
        sequence = next(self._sequence)
        self._events[sequence] = (stream_id, message)
        if len(self._events) > self._max_events:
            del self._events[next(iter(self._events))]
        return str(sequence)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        after = int(last_event_id) if last_event_id.isdigit() else -1
        if after not in self._events:
            return None
        stream_id = self._events[after][0]
        for sequence, (stream, message) in list(self._events.items()):
            # `None` is a priming event: its id marks a position; there is nothing in it to send again.
            if sequence > after and stream == stream_id and message is not None:
                await send_callback(EventMessage(message, str(sequence)))
        return stream_id


# ---------------------------------------------------------------------------------------------------------------
# Server-to-client messages


async def send_log(ctx: Ctx, level: types.LoggingLevel, data: Any) -> None:
    """A `notifications/message` on this request's stream, unless the session asked for a higher level."""
    if LOG_LEVELS.index(level) < LOG_LEVELS.index(_log_levels.get(_session_id(ctx), "debug")):
        return
    # Not `session.send_log_message`: that helper is deprecated (SEP-2577), the notification itself is not.
    notification = types.LoggingMessageNotification(
        params=types.LoggingMessageNotificationParams(level=level, logger="conformance-server", data=data)
    )
    await ctx.session.send_notification(notification, related_request_id=ctx.request_id)


def _session_id(ctx: Ctx) -> str:
    # On streamable HTTP the context carries the Starlette request the message came in.
    return ctx.request.headers.get("mcp-session-id", "") if isinstance(ctx.request, Request) else ""


# Per Mcp-Session-Id: `logging/setLevel` lasts for the session that sent it, not for every client of the server.
_log_levels: dict[str, types.LoggingLevel] = {}


async def ask_client(ctx: Ctx, request: types.ServerRequest, result_type: type[ResultT]) -> ResultT:
    """A server-to-client request (sampling, elicitation) sent on the stream of the tool call that needs it."""
    return await ctx.session.send_request(
        request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
    )


def text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=is_error)


# ---------------------------------------------------------------------------------------------------------------
# Tools


@dataclass(frozen=True)
class ToolEntry:
    tool: types.Tool
    run: ToolFn


TOOLS: dict[str, ToolEntry] = {}


def tool(name: str, description: str, input_schema: dict[str, Any] | None = None) -> Callable[[ToolFn], ToolFn]:
    def register(fn: ToolFn) -> ToolFn:
        definition = types.Tool(name=name, description=description, input_schema=input_schema or NO_ARGUMENTS)
        TOOLS[name] = ToolEntry(definition, fn)
        return fn

    return register


def _string_argument(name: str, description: str) -> dict[str, Any]:
    return {"type": "object", "properties": {name: {"type": "string", "description": description}}, "required": [name]}


@tool("test_simple_text", "Tests simple text content response")
async def simple_text(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    return text_result("This is a simple text response for testing.")


@tool("test_image_content", "Tests image content response")
async def image_content(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")])


@tool("test_audio_content", "Tests audio content response")
async def audio_content(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.AudioContent(type="audio", data=WAV_BASE64, mime_type="audio/wav")])


def _embedded_text(uri: str, text: str, mime_type: str = "text/plain") -> types.EmbeddedResource:
    return types.EmbeddedResource(
        type="resource", resource=types.TextResourceContents(uri=uri, mime_type=mime_type, text=text)
    )


@tool("test_embedded_resource", "Tests embedded resource content response")
async def embedded_resource(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    resource = _embedded_text("test://embedded-resource", "This is an embedded resource content.")
    return types.CallToolResult(content=[resource])


@tool("test_multiple_content_types", "Tests response with multiple content types (text, image, resource)")
async def multiple_content_types(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    payload = json.dumps({"test": "data", "value": 123})
    return types.CallToolResult(
        content=[
            types.TextContent(type="text", text="Multiple content types test:"),
            types.ImageContent(type="image", data=PNG_BASE64, mime_type="image/png"),
            _embedded_text("test://mixed-content-resource", payload, "application/json"),
        ]
    )


@tool("test_tool_with_logging", "Tests tool that emits log messages during execution")
async def tool_with_logging(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    for step, message in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
        if step:
            # Spaced out, so the client sees them arrive during the call rather than as one burst.
            await anyio.sleep(0.05)
        await send_log(ctx, "info", message)
    return text_result("Tool with logging executed successfully")


@tool("test_tool_with_progress", "Tests tool that reports progress notifications")
async def tool_with_progress(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    for step, progress in enumerate((0, 50, 100)):
        if step:
            await anyio.sleep(0.05)
        # A no-op when the caller sent no progressToken, as the spec wants.
        await ctx.session.report_progress(progress, 100, f"Completed step {progress} of 100")
    token = progress_token_from_params(ctx.params)
    return text_result(str(token if token is not None else 0))


@tool("test_error_handling", "Tests error response handling")
async def error_handling(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    # A tool's own failure is a result with isError (the model should see it), not a JSON-RPC error.
    return text_result("This tool intentionally returns an error for testing", is_error=True)


@tool(
    "test_reconnection",
    "Tests SSE stream disconnection and client reconnection (SEP-1699): the server closes the stream mid-call "
    "and sends the result after the client reconnects.",
)
async def reconnection(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    # The SDK offers the callback only when an event store is configured and the request's protocol version
    # (its MCP-Protocol-Version header) is 2025-11-25 or later: older clients were never primed to resume.
    if ctx.close_sse_stream is not None:
        await ctx.close_sse_stream()
    # Give the client time to come back with Last-Event-ID; the result goes to the event store either way.
    await anyio.sleep(0.1)
    return text_result(
        "Reconnection test completed successfully. If you received this, the client properly reconnected "
        "after stream closure."
    )


@tool(
    "test_sampling",
    "Tests server-initiated sampling (LLM completion request)",
    _string_argument("prompt", "The prompt to send to the LLM"),
)
async def sampling(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    request = types.CreateMessageRequest(
        params=types.CreateMessageRequestParams(
            messages=[
                types.SamplingMessage(role="user", content=types.TextContent(type="text", text=str(args["prompt"])))
            ],
            max_tokens=100,
        )
    )
    try:
        result = await ask_client(ctx, request, types.CreateMessageResult)
    except MCPError as err:
        return text_result(f"Sampling not supported or error: {err.error.message}", is_error=True)
    content = result.content
    reply = content.text if isinstance(content, types.TextContent) else "No response"
    return text_result(f"LLM response: {reply}")


async def elicit(ctx: Ctx, message: str, schema: dict[str, Any], answer_prefix: str) -> types.CallToolResult:
    request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))
    try:
        result = await ask_client(ctx, request, types.ElicitResult)
    except MCPError as err:
        return text_result(f"Elicitation not supported or error: {err.error.message}", is_error=True)
    return text_result(f"{answer_prefix}: action={result.action}, content={json.dumps(result.content or {})}")


@tool(
    "test_elicitation",
    "Tests server-initiated elicitation (user input request)",
    _string_argument("message", "The message to show the user"),
)
async def elicitation(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    schema = _string_argument("response", "User's response")
    return await elicit(ctx, str(args["message"]), schema, "User response")


# SEP-1034: a default for every primitive type an elicitation form can hold.
DEFAULTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}


@tool("test_elicitation_sep1034_defaults", "Tests elicitation with default values per SEP-1034")
async def elicitation_defaults(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    message = "Please review and update the form fields with defaults"
    return await elicit(ctx, message, DEFAULTS_SCHEMA, "Elicitation completed")


def _titled(prefix: str, labels: tuple[str, ...]) -> list[dict[str, str]]:
    return [{"const": f"{prefix}{i}", "title": label} for i, label in enumerate(labels, 1)]


# SEP-1330: the five enum shapes, single and multi select, with and without titles (and the legacy enumNames).
ENUMS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {
            "type": "string",
            "description": "Select one option",
            "enum": ["option1", "option2", "option3"],
        },
        "titledSingle": {
            "type": "string",
            "description": "Select one option with titles",
            "oneOf": _titled("value", ("First Option", "Second Option", "Third Option")),
        },
        "legacyEnum": {
            "type": "string",
            "description": "Select one option (legacy)",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "description": "Select multiple options",
            "minItems": 1,
            "maxItems": 3,
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "description": "Select multiple options with titles",
            "minItems": 1,
            "maxItems": 3,
            "items": {"anyOf": _titled("value", ("First Choice", "Second Choice", "Third Choice"))},
        },
    },
    "required": [],
}


@tool("test_elicitation_sep1330_enums", "Tests elicitation with enum schema improvements per SEP-1330")
async def elicitation_enums(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    return await elicit(ctx, "Please select options from the enum fields", ENUMS_SCHEMA, "Elicitation completed")


# SEP-1613: listed exactly as written, so the suite can see that $schema, $defs and additionalProperties survive.
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


@tool(
    "json_schema_2020_12_tool",
    "Tool with JSON Schema 2020-12 features for conformance testing (SEP-1613)",
    JSON_SCHEMA_2020_12,
)
async def json_schema_2020_12_tool(ctx: Ctx, args: dict[str, Any]) -> types.CallToolResult:
    return text_result(f"JSON Schema 2020-12 tool called with: {json.dumps(args)}")


async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[entry.tool for entry in TOOLS.values()])


async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
    entry = TOOLS.get(params.name)
    if entry is None:
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
    return await entry.run(ctx, params.arguments or {})


# ---------------------------------------------------------------------------------------------------------------
# Resources


@dataclass(frozen=True)
class StaticResource:
    resource: types.Resource
    contents: types.TextResourceContents | types.BlobResourceContents


def _static(name: str, title: str, description: str, mime_type: str, **content: str) -> StaticResource:
    uri = f"test://{name}"
    resource = types.Resource(uri=uri, name=name, title=title, description=description, mime_type=mime_type)
    contents: types.TextResourceContents | types.BlobResourceContents
    if "blob" in content:
        contents = types.BlobResourceContents(uri=uri, mime_type=mime_type, blob=content["blob"])
    else:
        contents = types.TextResourceContents(uri=uri, mime_type=mime_type, text=content["text"])
    return StaticResource(resource, contents)


STATIC_RESOURCES: dict[str, StaticResource] = {
    static.resource.uri: static
    for static in (
        _static(
            "static-text",
            "Static Text Resource",
            "A static text resource for testing",
            "text/plain",
            text="This is the content of the static text resource.",
        ),
        _static(
            "static-binary",
            "Static Binary Resource",
            "A static binary resource (image) for testing",
            "image/png",
            blob=PNG_BASE64,
        ),
        _static(
            "watched-resource",
            "Watched Resource",
            "A resource clients can subscribe to",
            "text/plain",
            text="Watched resource content",
        ),
    )
}

TEMPLATE = types.ResourceTemplate(
    uri_template="test://template/{id}/data",
    name="template",
    title="Resource Template",
    description="A resource template with parameter substitution",
    mime_type="application/json",
)
TEMPLATE_PATTERN = re.compile(r"test://template/(?P<id>[^/]+)/data")


async def list_resources(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    return types.ListResourcesResult(resources=[static.resource for static in STATIC_RESOURCES.values()])


async def list_resource_templates(
    ctx: Ctx, params: types.PaginatedRequestParams | None
) -> types.ListResourceTemplatesResult:
    return types.ListResourceTemplatesResult(resource_templates=[TEMPLATE])


async def read_resource(ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    if uri in STATIC_RESOURCES:
        return types.ReadResourceResult(contents=[STATIC_RESOURCES[uri].contents])
    match = TEMPLATE_PATTERN.fullmatch(uri)
    if match is None:
        # The spec's code for an unknown resource.
        raise MCPError(code=-32002, message=f"Resource not found: {uri}", data={"uri": uri})
    item_id = match["id"]
    text = json.dumps({"id": item_id, "templateTest": True, "data": f"Data for ID: {item_id}"})
    return types.ReadResourceResult(
        contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
    )


# URIs some session subscribed to; nothing here changes, so no resources/updated is ever due.
subscriptions: set[str] = set()


async def subscribe(ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
    subscriptions.add(str(params.uri))
    return types.EmptyResult()


async def unsubscribe(ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
    subscriptions.discard(str(params.uri))
    return types.EmptyResult()


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def _prompt(name: str, title: str, description: str, *arguments: tuple[str, str]) -> types.Prompt:
    return types.Prompt(
        name=name,
        title=title,
        description=description,
        arguments=[types.PromptArgument(name=arg, description=text, required=True) for arg, text in arguments] or None,
    )


PROMPTS: dict[str, types.Prompt] = {
    prompt.name: prompt
    for prompt in (
        _prompt("test_simple_prompt", "Simple Test Prompt", "A simple prompt without arguments"),
        _prompt(
            "test_prompt_with_arguments",
            "Prompt With Arguments",
            "A prompt with required arguments",
            ("arg1", "First test argument"),
            ("arg2", "Second test argument"),
        ),
        _prompt(
            "test_prompt_with_embedded_resource",
            "Prompt With Embedded Resource",
            "A prompt that includes an embedded resource",
            ("resourceUri", "URI of the resource to embed"),
        ),
        _prompt("test_prompt_with_image", "Prompt With Image", "A prompt that includes image content"),
    )
}


def _user(content: types.TextContent | types.ImageContent | types.EmbeddedResource) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=content)


def _user_text(text: str) -> types.PromptMessage:
    return _user(types.TextContent(type="text", text=text))


def render_prompt(name: str, args: dict[str, str]) -> list[types.PromptMessage]:
    if name == "test_simple_prompt":
        return [_user_text("This is a simple prompt for testing.")]
    if name == "test_prompt_with_arguments":
        return [_user_text(f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'")]
    if name == "test_prompt_with_embedded_resource":
        return [
            _user(_embedded_text(args["resourceUri"], "Embedded resource content for testing.")),
            _user_text("Please process the embedded resource above."),
        ]
    return [
        _user(types.ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")),
        _user_text("Please analyze the image above."),
    ]


async def list_prompts(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
    return types.ListPromptsResult(prompts=list(PROMPTS.values()))


async def get_prompt(ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
    prompt = PROMPTS.get(params.name)
    if prompt is None:
        raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
    args = params.arguments or {}
    missing = [arg.name for arg in prompt.arguments or [] if arg.required and arg.name not in args]
    if missing:
        raise MCPError(code=types.INVALID_PARAMS, message=f"Missing required arguments: {', '.join(missing)}")
    return types.GetPromptResult(description=prompt.description, messages=render_prompt(params.name, args))


# ---------------------------------------------------------------------------------------------------------------
# Logging level and completion


async def set_logging_level(ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
    _log_levels[_session_id(ctx)] = params.level
    return types.EmptyResult()


# Candidates per argument name, for prompt arguments and the template's {id}.
COMPLETIONS: dict[str, list[str]] = {
    "arg1": ["paris", "park", "party"],
    "arg2": ["alpha", "beta", "gamma"],
    "id": ["1", "2", "3", "123"],
}


async def complete(ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
    candidates = COMPLETIONS.get(params.argument.name, [])
    values = [value for value in candidates if value.startswith(params.argument.value)]
    return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))


# ---------------------------------------------------------------------------------------------------------------
# Server, app and runners


def build_server() -> Server[Any]:
    server: Server[Any] = Server(
        "tollbooth-conformance-server",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_resource_templates,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_list_prompts=list_prompts,
        on_get_prompt=get_prompt,
        on_completion=complete,
    )
    # Not `on_set_logging_level=`: that constructor argument warns (logging is deprecated for 2026-07-28), while
    # the 2025-11-25 clients the suite runs still use it. Registering it is what advertises `logging`.
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_logging_level)
    return server


def localhost_only() -> TransportSecuritySettings:
    """DNS rebinding protection: answer only when Host (and Origin, if sent) name the loopback interface.

    The SDK turns the same settings on by itself for a 127.0.0.1 app; spelled out here so the guard does not
    silently vanish if the host argument changes. A bad Host gets 421, a bad Origin 403."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


def build_app() -> Starlette:
    return build_server().streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=False,
        stateless_http=False,
        event_store=InMemoryEventStore(),
        retry_interval=RETRY_INTERVAL_MS,
        transport_security=localhost_only(),
    )


class HangUp:
    """ASGI wrapper that can tell every request in flight that its client went away.

    Stopping uvicorn in a thread leaves open SSE streams (a session's GET stream, a stream waiting on a slow
    tool) running until the graceful-shutdown timeout cancels them with a traceback: sse-starlette watches for
    shutdown only through uvicorn's signal handlers, which a server outside the main thread never installs.
    An `http.disconnect` is what every streaming response already handles, so that is what stopping sends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hung_up = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self._loop = asyncio.get_running_loop()

        async def receive_or_hang_up() -> Message:
            receiving = asyncio.ensure_future(receive())
            hanging_up = asyncio.ensure_future(self._hung_up.wait())
            await asyncio.wait({receiving, hanging_up}, return_when=asyncio.FIRST_COMPLETED)
            hanging_up.cancel()
            if receiving.done():
                return receiving.result()
            receiving.cancel()
            return {"type": "http.disconnect"}

        started = finished = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, finished
            started = started or message["type"] == "http.response.start"
            finished = finished or (message["type"] == "http.response.body" and not message.get("more_body"))
            await send(message)

        await self.app(scope, receive_or_hang_up, tracking_send)
        if self._hung_up.is_set() and started and not finished:
            # A stream ended by the hang-up stops mid-body: end it, so the client sees a clean close (and
            # uvicorn does not log an unfinished response).
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def hang_up(self) -> None:
        """Thread-safe: the event belongs to the server's loop."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._hung_up.set)


def _uvicorn(app: ASGIApp, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        # A backstop only: HangUp ends the streams that would otherwise hold shutdown.
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def start_conformance_server() -> tuple[str, Callable[[], None]]:
    """Serve the conformance server on a free loopback port; returns its base URL (the MCP endpoint is
    base + "/mcp") and a function that stops it."""
    port = free_port()
    app = HangUp(build_app())
    stop_server = serve_in_thread(_uvicorn(app, port), "conformance MCP server")

    def stop() -> None:
        app.hang_up()
        stop_server()

    return f"http://127.0.0.1:{port}", stop


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        sys.exit("usage: python conformance_server.py PORT")
    _uvicorn(build_app(), int(sys.argv[1])).run()
