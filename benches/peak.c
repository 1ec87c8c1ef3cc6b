/*
 * Runs a command and writes its peak resident memory, in KiB, to a file:
 * the `ru_maxrss` wait4 gives for it.
 *
 * A process started straight from the bench cannot be measured so: at
 * exec, Linux records the high-water mark of the memory the process had
 * before (a copy of the bench's, or the bench's own after vfork), so every
 * child of a large bench reads at least the bench's size. Started from
 * this small program, the command's figure is its own.
 *
 * Usage: peak OUTFILE COMMAND [ARGS...]; exits as COMMAND did (1 if it
 * could not be run, 128+N if killed by signal N). Built by
 * benches/mama.rs with `cc -O2`.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: peak OUTFILE COMMAND [ARGS...]\n");
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    int status;
    struct rusage usage;
    if (wait4(child, &status, 0, &usage) != child) {
        perror("wait4");
        return 1;
    }
    FILE *out = fopen(argv[1], "w");
    if (out == NULL || fprintf(out, "%ld\n", usage.ru_maxrss) < 0 || fclose(out) != 0) {
        perror(argv[1]);
        return 1;
    }
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}
