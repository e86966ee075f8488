//! JSON-RPC sniffing and MCP routing (see `dpuproxy_l7::fuzz::mcp`).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        dpuproxy_l7::fuzz::mcp(data);
    });
}
