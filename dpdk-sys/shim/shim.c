/* See shim.h: forwards to DPDK's static inline functions. */
#include "shim.h"

int dpuproxy_rte_errno(void) { return rte_errno; }
unsigned dpuproxy_rte_lcore_id(void) { return rte_lcore_id(); }

uint64_t dpuproxy_rte_rdtsc(void) { return rte_get_tsc_cycles(); }

uint16_t dpuproxy_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                                   struct rte_mbuf **rx_pkts, uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t dpuproxy_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                                   struct rte_mbuf **tx_pkts, uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *dpuproxy_rte_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

int dpuproxy_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp,
                                    struct rte_mbuf **mbufs, unsigned count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void dpuproxy_rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

void dpuproxy_rte_pktmbuf_free_bulk(struct rte_mbuf **mbufs, unsigned count)
{
	rte_pktmbuf_free_bulk(mbufs, count);
}

char *dpuproxy_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_append(m, len);
}

char *dpuproxy_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_prepend(m, len);
}

char *dpuproxy_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_adj(m, len);
}

int dpuproxy_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_trim(m, len);
}

void dpuproxy_rte_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }

uint8_t *dpuproxy_rte_pktmbuf_mtod(struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, uint8_t *);
}

uint16_t dpuproxy_rte_pktmbuf_data_len(const struct rte_mbuf *m) { return m->data_len; }
uint32_t dpuproxy_rte_pktmbuf_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }
uint16_t dpuproxy_rte_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
uint16_t dpuproxy_rte_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }
uint16_t dpuproxy_rte_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
uint32_t dpuproxy_rte_mbuf_rss_hash(const struct rte_mbuf *m) { return m->hash.rss; }
int dpuproxy_rte_mbuf_has_rss_hash(const struct rte_mbuf *m) { return (m->ol_flags & RTE_MBUF_F_RX_RSS_HASH) != 0; }

const uint64_t DPUPROXY_RTE_ETH_RSS_IP = RTE_ETH_RSS_IP;
const uint64_t DPUPROXY_RTE_ETH_RSS_TCP = RTE_ETH_RSS_TCP;
const uint64_t DPUPROXY_RTE_ETH_RSS_NONFRAG_IPV4_TCP = RTE_ETH_RSS_NONFRAG_IPV4_TCP;
const uint64_t DPUPROXY_RTE_ETH_RSS_UDP = RTE_ETH_RSS_UDP;
const uint16_t DPUPROXY_RTE_MBUF_DEFAULT_BUF_SIZE = RTE_MBUF_DEFAULT_BUF_SIZE;
const uint16_t DPUPROXY_RTE_PKTMBUF_HEADROOM = RTE_PKTMBUF_HEADROOM;
