-- wrk script: one small MCP tools/call (echo) on an existing session.
-- The session id comes from the environment (bench/wrk_kernel.sh sets it). Error statuses
-- show up in wrk's own "Non-2xx or 3xx responses" line (no Lua response() hook: it costs
-- the client a Lua call and a header/body copy per response).
local sid = os.getenv("MCP_SESSION_ID")
wrk.method = "POST"
wrk.path = "/mcp"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Session-Id"] = sid
wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
wrk.body = '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'
