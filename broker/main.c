/* herald-broker: the broker process. Options: hr_broker_options (broker.c); --help lists them. */
#include "broker.h"

#include "hr_error.h"
#include "hr_log.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

static hr_broker_t *volatile hr_main_broker;
/* A signal that arrived before the broker was serving (opening a large LMDB file takes time):
 * stop as soon as it is open, cleanly, instead of dying mid-start. */
static volatile sig_atomic_t hr_main_stop_requested;

static void hr_main_on_signal(int sig)
{
    (void)sig;
    hr_main_stop_requested = 1;
    if (hr_main_broker != NULL)
        hr_broker_stop(hr_main_broker);
}

int main(int argc, char **argv)
{
    hr_broker_config_t config;
    char *positional[1];
    size_t n_positional;
    int want_help;
    char err[512];
    if (argc == 2 && strcmp(argv[1], "--options-markdown") == 0) {
        hr_options_print_markdown(stdout, hr_broker_options, hr_broker_options_count,
                                  "HERALD_BROKER_");
        return 0;
    }
    if (hr_options_parse(hr_broker_options, hr_broker_options_count, "HERALD_BROKER_", &config,
                         argc, argv, positional, 0, &n_positional, &want_help, err,
                         sizeof err) != 0) {
        fprintf(stderr, "herald-broker: %s\n", err);
        return 2;
    }
    if (want_help) {
        printf("usage: herald-broker [options]\n\n"
               "Owns partitions of the topic log in LMDB, assigns message IDs, serves history\n"
               "and fans committed messages out to edges. Every option also reads "
               "HERALD_BROKER_<NAME>.\n\n");
        hr_options_print_help(stdout, hr_broker_options, hr_broker_options_count, "HERALD_BROKER_");
        return 0;
    }
    int level = hr_log_level_parse(config.log_level);
    if (level < 0) {
        fprintf(stderr, "herald-broker: --log-level: '%s' is not debug, info, warn or error\n",
                config.log_level);
        return 2;
    }
    hr_log_threshold = level;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = hr_main_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    hr_broker_t *broker = NULL;
    int rc = hr_broker_new(&broker, &config, err, sizeof err);
    if (rc != 0) {
        HR_ERROR("broker", "event=start_failed error=\"%s\"", err);
        fprintf(stderr, "herald-broker: %s\n", err);
        return 1;
    }
    hr_main_broker = broker;
    if (hr_main_stop_requested) {
        HR_INFO("broker", "event=stopped_before_serving");
        hr_main_broker = NULL;
        hr_broker_destroy(&broker);
        return 0;
    }
    rc = hr_broker_run(broker);
    hr_main_broker = NULL;
    hr_broker_destroy(&broker);
    HR_INFO("broker", "event=stopped");
    return rc == 0 ? 0 : 1;
}
