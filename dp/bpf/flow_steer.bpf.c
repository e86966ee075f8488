// dpuproxy's XDP program for `net_af_xdp`'s `xdp_prog=`: per-flow
// steering between the DPDK path (an AF_XDP socket) and the kernel stack
// on the same interface, address and MAC, for the live mode switch.
//
// Contract (the Rust side is `dpuproxy_dp::xdp`):
// - `dpuproxy_flows`: key = a TCP flow as it arrives (remote address,
//   local address, remote port, local port; network byte order), value =
//   its owner: 1 DPDK, 2 kernel, 3 held (dropped while the connection
//   moves; TCP retransmits). A flow without an entry goes to the default.
// - `dpuproxy_mode[0]`: the default owner (1 DPDK, 2 kernel; anything
//   else counts as kernel). New connections and backends' replies to new
//   connections follow it.
// - ARP requests, ICMP, other IPv4 and other ethertypes go to the kernel,
//   which answers for the shared address; ARP replies go to the default
//   owner (the path that is resolving neighbours).
// - A frame for DPDK whose queue has no AF_XDP socket is dropped, never
//   passed up: the kernel would answer it with a RST.
// - `dpuproxy_stats` (per CPU): frames to DPDK, to the kernel, held.
// - `xsks_map` is the name `net_af_xdp` fills with its sockets.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define OWNER_DPDK 1
#define OWNER_KERNEL 2
#define OWNER_HOLD 3

#define STAT_DPDK 0
#define STAT_KERNEL 1
#define STAT_HELD 2
#define STATS 3

#define ARP_OP_REPLY 2

struct flow_key {
	__u32 remote_addr;
	__u32 local_addr;
	__u16 remote_port;
	__u16 local_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, __u8);
} dpuproxy_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} dpuproxy_mode SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STATS);
	__type(key, __u32);
	__type(value, __u64);
} dpuproxy_stats SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&dpuproxy_stats, &stat);
	if (n)
		*n += 1;
}

static __always_inline __u32 default_owner(void)
{
	__u32 zero = 0;
	__u32 *mode = bpf_map_lookup_elem(&dpuproxy_mode, &zero);
	return (mode && *mode == OWNER_DPDK) ? OWNER_DPDK : OWNER_KERNEL;
}

static __always_inline __u32 owner_of(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return OWNER_KERNEL;
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		// htype, ptype, hlen, plen, then the operation.
		__u8 *arp = (void *)(eth + 1);
		if ((void *)(arp + 8) > end)
			return OWNER_KERNEL;
		if (arp[6] == 0 && arp[7] == ARP_OP_REPLY)
			return default_owner();
		return OWNER_KERNEL;
	}
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return OWNER_KERNEL;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return OWNER_KERNEL;
	if (ip->protocol != IPPROTO_TCP)
		return OWNER_KERNEL;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return OWNER_KERNEL;
	struct tcphdr *tcp = (void *)ip + ihl;
	if ((void *)(tcp + 1) > end)
		return default_owner();
	struct flow_key key = {};
	key.remote_addr = ip->saddr;
	key.local_addr = ip->daddr;
	key.remote_port = tcp->source;
	key.local_port = tcp->dest;
	__u8 *owner = bpf_map_lookup_elem(&dpuproxy_flows, &key);
	if (owner && *owner >= OWNER_DPDK && *owner <= OWNER_HOLD)
		return *owner;
	return default_owner();
}

SEC("xdp")
int dpuproxy_steer(struct xdp_md *ctx)
{
	switch (owner_of(ctx)) {
	case OWNER_DPDK:
		count(STAT_DPDK);
		return bpf_redirect_map(&xsks_map, ctx->rx_queue_index, XDP_DROP);
	case OWNER_HOLD:
		count(STAT_HELD);
		return XDP_DROP;
	default:
		count(STAT_KERNEL);
		return XDP_PASS;
	}
}

// No GPL-only helper is used, so the repository's own licence applies.
char _license[] SEC("license") = "Apache-2.0";
