#include "partition.h"

#include <assert.h>

/* FNV-1a, 64-bit parameters (http://www.isthe.com/chongo/tech/comp/fnv/). Fixed forever: the
 * partition map and every cursor ever issued depend on these exact values. */
#define HR_FNV64_BASIS 0xcbf29ce484222325ULL
#define HR_FNV64_PRIME 0x100000001b3ULL

uint64_t hr_fnv1a64(const void *bytes, size_t len)
{
    const unsigned char *p = bytes;
    uint64_t h = HR_FNV64_BASIS;

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= HR_FNV64_PRIME;
    }
    return h;
}

uint32_t hr_partition_of(const char *topic, size_t len, uint32_t partitions)
{
    assert(partitions >= 1);
    return (uint32_t)(hr_fnv1a64(topic, len) % partitions);
}

uint32_t hr_partition_owner(uint32_t partition, uint32_t n_brokers)
{
    assert(n_brokers >= 1);
    return partition % n_brokers;
}
