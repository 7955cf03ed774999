/*
 * Replay driver: runs a fuzz target's LLVMFuzzerTestOneInput over every file of the corpus
 * directories (or single files) named on the command line, so CTest re-checks the seed corpus
 * and every past crash on every ordinary build (STYLE.md §Tests). A crash or a failed check in
 * the target aborts the process; a path that cannot be read, or no input at all, exits 1.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hr_alloc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Each input gets a buffer of exactly its size, so a sanitizer build sees any overread. */
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;
    uint8_t chunk[4096];

    if (f == NULL) {
        fprintf(stderr, "replay: %s: cannot open\n", path);
        return -1;
    }
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n > cap) {
            cap = (len + n) * 2;
            buf = hr_realloc(buf, cap);
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    if (ferror(f)) {
        fprintf(stderr, "replay: %s: read error\n", path);
        fclose(f);
        hr_free(buf);
        return -1;
    }
    fclose(f);
    {
        uint8_t *exact = hr_malloc(len);
        if (len > 0)
            memcpy(exact, buf, len);
        LLVMFuzzerTestOneInput(exact, len);
        hr_free(exact);
    }
    hr_free(buf);
    return 0;
}

static int run_path(const char *path, size_t *count)
{
    struct stat st;
    DIR *dir;
    struct dirent *de;
    int rc = 0;

    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: %s: not found\n", path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        if (run_file(path) != 0)
            return -1;
        (*count)++;
        return 0;
    }
    dir = opendir(path);
    if (dir == NULL) {
        fprintf(stderr, "replay: %s: cannot open directory\n", path);
        return -1;
    }
    while (rc == 0 && (de = readdir(dir)) != NULL) {
        size_t len = strlen(path) + strlen(de->d_name) + 2;
        char *child;

        if (de->d_name[0] == '.')
            continue;
        child = hr_malloc(len);
        snprintf(child, len, "%s/%s", path, de->d_name);
        rc = run_path(child, count);
        hr_free(child);
    }
    closedir(dir);
    return rc;
}

int main(int argc, char **argv)
{
    size_t count = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++)
        if (run_path(argv[i], &count) != 0)
            return 1;
    printf("replay: %zu inputs\n", count);
    if (count == 0) {
        fprintf(stderr, "replay: no inputs found\n");
        return 1;
    }
    return 0;
}
