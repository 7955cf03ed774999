/*
 * hr_partition — the documented, stable topic hash and the partition map of DESIGN.md §Cluster.
 * Any client library can reproduce it: partition = FNV-1a 64 (offset basis 0xcbf29ce484222325,
 * prime 0x100000001b3) of the topic name's bytes, mod P; partition p is owned by broker p mod N.
 * The same hash keys topics inside cursors. Pure functions; any thread.
 */
#ifndef HR_PARTITION_H
#define HR_PARTITION_H

#include <stddef.h>
#include <stdint.h>

#define HR_PARTITIONS_DEFAULT 64

/* 64-bit FNV-1a of `len` bytes. */
uint64_t hr_fnv1a64(const void *bytes, size_t len);

/* The partition of a topic name; `partitions` must be >= 1. */
uint32_t hr_partition_of(const char *topic, size_t len, uint32_t partitions);

/* The index, in the ordered broker list of `n_brokers` (>= 1), of the partition's owner. */
uint32_t hr_partition_owner(uint32_t partition, uint32_t n_brokers);

#endif
