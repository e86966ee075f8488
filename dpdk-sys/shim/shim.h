/*
 * dpuproxy-dpdk-sys C shim: out-of-line wrappers for DPDK's `static inline`
 * functions and macros, which have no symbol in the shared libraries and so
 * cannot be bound by bindgen directly. Everything here is a one-line
 * forward; the semantics are DPDK's own. No architecture-specific code: the
 * TSC read goes through DPDK's portable rte_get_tsc_cycles(),
 * which is rdtsc on x86 and cntvct_el0 (or the PMU) on aarch64.
 */
#ifndef DPUPROXY_DPDK_SHIM_H
#define DPUPROXY_DPDK_SHIM_H

#include <stdint.h>

#include <rte_config.h>
#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* errno and lcore (per-lcore TLS variables behind macros). */
int dpuproxy_rte_errno(void);
unsigned dpuproxy_rte_lcore_id(void);

/* Cycles. */
uint64_t dpuproxy_rte_rdtsc(void);

/* Burst I/O. */
uint16_t dpuproxy_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                                   struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t dpuproxy_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                                   struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

/* Mbufs. */
struct rte_mbuf *dpuproxy_rte_pktmbuf_alloc(struct rte_mempool *mp);
int dpuproxy_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp,
                                    struct rte_mbuf **mbufs, unsigned count);
void dpuproxy_rte_pktmbuf_free(struct rte_mbuf *m);
void dpuproxy_rte_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count);
char *dpuproxy_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *dpuproxy_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *dpuproxy_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int dpuproxy_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
void dpuproxy_rte_pktmbuf_reset(struct rte_mbuf *m);
uint8_t *dpuproxy_rte_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t dpuproxy_rte_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t dpuproxy_rte_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t dpuproxy_rte_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint16_t dpuproxy_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t dpuproxy_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
uint32_t dpuproxy_rte_mbuf_rss_hash(const struct rte_mbuf *m);
int dpuproxy_rte_mbuf_has_rss_hash(const struct rte_mbuf *m);

/* Constants defined through function-like macros (RTE_BIT64 etc.). */
extern const uint64_t DPUPROXY_RTE_ETH_RSS_IP;
extern const uint64_t DPUPROXY_RTE_ETH_RSS_TCP;
extern const uint64_t DPUPROXY_RTE_ETH_RSS_NONFRAG_IPV4_TCP;
extern const uint64_t DPUPROXY_RTE_ETH_RSS_UDP;
extern const uint16_t DPUPROXY_RTE_MBUF_DEFAULT_BUF_SIZE;
extern const uint16_t DPUPROXY_RTE_PKTMBUF_HEADROOM;

#endif
