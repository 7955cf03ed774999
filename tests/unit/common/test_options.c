/* Unit tests for common/: the options table (hr_options) and error text (hr_error). */
#include "hr_error.h"
#include "hr_options.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

typedef struct {
    const char *name;
    int64_t count;
    int64_t size;
    bool flag;
} test_config_t;

static const hr_option_t test_options[] = {
    {"name", HR_OPT_STRING, "default", 0, 0, offsetof(test_config_t, name), "a string"},
    {"count", HR_OPT_INT, "5", 1, 100, offsetof(test_config_t, count), "an integer"},
    {"map-size", HR_OPT_BYTES, "1M", 1024, INT64_MAX, offsetof(test_config_t, size), "bytes"},
    {"flag", HR_OPT_BOOL, "true", 0, 0, offsetof(test_config_t, flag), "a boolean"},
};
#define N_OPTS (sizeof test_options / sizeof test_options[0])

static int parse(test_config_t *c, int argc, char **argv, char **pos, size_t *npos, char *err)
{
    int help;
    return hr_options_parse(test_options, N_OPTS, "HERALD_", c, argc, argv, pos, 4, npos, &help,
                            err, 256);
}

static void test_defaults(void **state)
{
    (void)state;
    test_config_t c;
    char *argv[] = {"prog"}, *pos[4], err[256];
    size_t npos;
    unsetenv("HERALD_COUNT");
    assert_int_equal(parse(&c, 1, argv, pos, &npos, err), 0);
    assert_string_equal(c.name, "default");
    assert_int_equal(c.count, 5);
    assert_int_equal(c.size, 1048576);
    assert_true(c.flag);
    assert_int_equal(npos, 0);
}

static void test_flags_env_and_positionals(void **state)
{
    (void)state;
    test_config_t c;
    char *argv[] = {"prog",      "cmd", "--name", "x",      "--map-size=2G",
                    "--no-flag", "arg", "--",     "--count"};
    char *pos[4], err[256];
    size_t npos;
    setenv("HERALD_COUNT", "7", 1);
    setenv("HERALD_NAME", "from-env", 1);
    assert_int_equal(parse(&c, 9, argv, pos, &npos, err), 0);
    assert_string_equal(c.name, "x"); /* the flag beats the environment */
    assert_int_equal(c.count, 7);     /* the environment beats the default */
    assert_int_equal(c.size, 2LL * 1024 * 1024 * 1024);
    assert_false(c.flag);
    assert_int_equal(npos, 3);
    assert_string_equal(pos[0], "cmd");
    assert_string_equal(pos[1], "arg");
    assert_string_equal(pos[2], "--count");
    unsetenv("HERALD_COUNT");
    unsetenv("HERALD_NAME");
}

static void test_bad_values(void **state)
{
    (void)state;
    test_config_t c;
    char *pos[4], err[256];
    size_t npos;
    char *a1[] = {"prog", "--count", "500"};
    assert_int_equal(parse(&c, 3, a1, pos, &npos, err), HR_E_INVALID_REQUEST);
    assert_string_equal(err, "--count: 500 is outside [1, 100]");
    char *a2[] = {"prog", "--map-size", "12Q"};
    assert_int_equal(parse(&c, 3, a2, pos, &npos, err), HR_E_INVALID_REQUEST);
    assert_non_null(strstr(err, "'12Q' is not a byte size"));
    char *a3[] = {"prog", "--bogus"};
    assert_int_equal(parse(&c, 2, a3, pos, &npos, err), HR_E_INVALID_REQUEST);
    assert_string_equal(err, "unknown option '--bogus' (see --help)");
    char *a4[] = {"prog", "--count"};
    assert_int_equal(parse(&c, 2, a4, pos, &npos, err), HR_E_INVALID_REQUEST);
    assert_string_equal(err, "option '--count' needs a value");
    char *a5[] = {"prog", "--flag=maybe"};
    assert_int_equal(parse(&c, 2, a5, pos, &npos, err), HR_E_INVALID_REQUEST);
    setenv("HERALD_COUNT", "zero", 1);
    char *a6[] = {"prog"};
    assert_int_equal(parse(&c, 1, a6, pos, &npos, err), HR_E_INVALID_REQUEST);
    assert_non_null(strstr(err, "HERALD_COUNT"));
    unsetenv("HERALD_COUNT");
}

static void test_error_codes(void **state)
{
    (void)state;
    assert_string_equal(hr_error_code(HR_E_INVALID_TOPIC), "invalid_topic");
    assert_string_equal(hr_error_code(HR_E_STORAGE_FULL), "storage_full");
    assert_string_equal(hr_error_code(-2), "internal");
    assert_int_equal(hr_error_from_code("invalid_cursor"), HR_E_INVALID_CURSOR);
    assert_int_equal(hr_error_from_code("nonsense"), HR_E_INTERNAL);
    assert_string_equal(hr_strerror(-2), "No such file or directory");
    for (int e = HR_E_FIRST; e <= HR_E_LAST; e++)
        assert_int_equal(hr_error_from_code(hr_error_code(e)), e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_flags_env_and_positionals),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_error_codes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
