herald_unit_test(test_http test_http.c hr_edge)
