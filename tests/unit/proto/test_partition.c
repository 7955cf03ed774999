/* hr_partition: the FNV-1a 64 vectors any client library must reproduce, and the map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "partition.h"

static void test_fnv1a64_vectors(void **state)
{
    (void)state;
    /* Published FNV-1a 64 test vectors (isthe.com/chongo/src/fnv/test_fnv.c). */
    assert_true(hr_fnv1a64("", 0) == 0xcbf29ce484222325ULL);
    assert_true(hr_fnv1a64("a", 1) == 0xaf63dc4c8601ec8cULL);
    assert_true(hr_fnv1a64("foobar", 6) == 0x85944171f73967e8ULL);
    /* The bytes, not a C string: an embedded NUL counts. */
    assert_true(hr_fnv1a64("a\0b", 3) != hr_fnv1a64("a", 1));
}

static void test_partition_of(void **state)
{
    (void)state;
    assert_int_equal(hr_partition_of("foobar", 6, HR_PARTITIONS_DEFAULT),
                     0x85944171f73967e8ULL % 64);
    assert_int_equal(hr_partition_of("foobar", 6, 64), 40);
    assert_int_equal(hr_partition_of("a", 1, 64), 12);
    assert_int_equal(hr_partition_of("news", 4, 64), 38);
    assert_int_equal(hr_partition_of("chat:room@1", 11, 64), 55);
    assert_int_equal(hr_partition_of("foobar", 6, 1), 0);
    assert_int_equal(hr_partition_of("foobar", 6, 1000), 0x85944171f73967e8ULL % 1000);
    assert_int_equal(hr_partition_of("foobar", 6, 1000), 968);
}

static void test_partition_owner(void **state)
{
    (void)state;
    assert_int_equal(hr_partition_owner(40, 1), 0);
    assert_int_equal(hr_partition_owner(40, 3), 1);
    assert_int_equal(hr_partition_owner(63, 64), 63);
    assert_int_equal(hr_partition_owner(0, 5), 0);
    assert_int_equal(hr_partition_owner(7, 5), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fnv1a64_vectors),
        cmocka_unit_test(test_partition_of),
        cmocka_unit_test(test_partition_owner),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
