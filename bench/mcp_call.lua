-- wrk script: one small MCP tools/call (echo) on an existing session.
-- The session id comes from the environment (bench/wrk_kernel.sh sets it).
local sid = os.getenv("MCP_SESSION_ID")
wrk.method = "POST"
wrk.path = "/mcp"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Session-Id"] = sid
wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
wrk.body = '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'

function response(status, headers, body)
   if status ~= 200 then
      io.stderr:write("unexpected status " .. status .. "\n")
   end
end
