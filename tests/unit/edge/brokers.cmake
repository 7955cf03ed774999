# hr_brokers against real herald-broker processes (started by the test on free loopback ports).
herald_unit_test(test_brokers test_brokers.c hr_edge)
target_compile_definitions(test_brokers PRIVATE HERALD_BROKER_BIN="$<TARGET_FILE:herald-broker>")
add_dependencies(test_brokers herald-broker)
