/* A child that plants address-space layouts on command, for the Linux reader tests.
 *
 * Reads one command per line on stdin, answers one line on stdout:
 *   map PAGES                 -> anonymous rw private mapping; prints its address
 *   reserve PAGES             -> PROT_NONE private mapping; prints its address
 *   unmap ADDR PAGES          -> munmap; prints "ok" or "err ERRNO"
 *   protect ADDR PAGES PROT   -> mprotect (PROT as r/w/x letters or "-")
 *   alternate ADDR PAGES      -> mprotect every other page read-only
 *   mapfile PAGES PATH        -> map a new file of that size, shared; prints address
 *                                (PATH is the rest of the line: it may hold spaces)
 *   name ADDR PAGES NAME      -> prctl(PR_SET_VMA_ANON_NAME)
 *   touch ADDR PAGES          -> write one byte per page (makes it resident)
 *   split                     -> map one large mapping and mprotect alternate pages until
 *                                the kernel refuses; prints "enomem COUNT" (COUNT = pages done)
 *   grow N                    -> one mapping of N pages (N rounded up to even), split into
 *                                N single-page regions: read-only and no-access alternating
 *                                (it starts read-only and ends no-access, so it cannot merge
 *                                with the previous grow, placed just above it)
 *   exit                      -> exit 0
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

static long page;

static int prot_of(const char *s) {
    int p = PROT_NONE;
    for (; *s; s++) {
        if (*s == 'r') p |= PROT_READ;
        if (*s == 'w') p |= PROT_WRITE;
        if (*s == 'x') p |= PROT_EXEC;
    }
    return p;
}

static void reply_status(int rc) {
    if (rc == 0) printf("ok\n");
    else printf("err %d\n", errno);
}

int main(void) {
    char line[4096], cmd[64], arg[2048], name[1024];
    unsigned long addr, pages;
    page = sysconf(_SC_PAGESIZE);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready %d\n", getpid());
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%63s", cmd) != 1) continue;
        if (!strcmp(cmd, "map") || !strcmp(cmd, "reserve")) {
            sscanf(line, "%*s %lu", &pages);
            int prot = !strcmp(cmd, "map") ? PROT_READ | PROT_WRITE : PROT_NONE;
            void *p = mmap(NULL, pages * page, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) printf("err %d\n", errno);
            else printf("%lx\n", (unsigned long)p);
        } else if (!strcmp(cmd, "unmap")) {
            sscanf(line, "%*s %lx %lu", &addr, &pages);
            reply_status(munmap((void *)addr, pages * page));
        } else if (!strcmp(cmd, "protect")) {
            sscanf(line, "%*s %lx %lu %63s", &addr, &pages, arg);
            reply_status(mprotect((void *)addr, pages * page, prot_of(arg)));
        } else if (!strcmp(cmd, "alternate")) {
            sscanf(line, "%*s %lx %lu", &addr, &pages);
            int rc = 0;
            for (unsigned long i = 0; i < pages && rc == 0; i += 2)
                rc = mprotect((void *)(addr + i * page), page, PROT_READ);
            reply_status(rc);
        } else if (!strcmp(cmd, "mapfile")) {
            sscanf(line, "%*s %lu %2047[^\n]", &pages, arg);
            int fd = open(arg, O_RDWR | O_CREAT | O_TRUNC, 0600);
            if (fd < 0 || ftruncate(fd, pages * page) != 0) { printf("err %d\n", errno); continue; }
            void *p = mmap(NULL, pages * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            if (p == MAP_FAILED) printf("err %d\n", errno);
            else printf("%lx\n", (unsigned long)p);
        } else if (!strcmp(cmd, "name")) {
            sscanf(line, "%*s %lx %lu %1023s", &addr, &pages, name);
            reply_status(prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, addr, pages * page, name));
        } else if (!strcmp(cmd, "touch")) {
            sscanf(line, "%*s %lx %lu", &addr, &pages);
            for (unsigned long i = 0; i < pages; i++) ((volatile char *)addr)[i * page] = 1;
            printf("ok\n");
        } else if (!strcmp(cmd, "split")) {
            /* One mapping far larger than the limit allows to split completely. */
            unsigned long n = 1UL << 18;
            char *p = mmap(NULL, n * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) { printf("err %d\n", errno); continue; }
            unsigned long i;
            for (i = 0; i < n; i += 2)
                if (mprotect(p + i * page, page, PROT_READ) != 0) break;
            if (i >= n) printf("err 0\n");
            else printf("%s %lu\n", errno == ENOMEM ? "enomem" : "err", i / 2);
        } else if (!strcmp(cmd, "grow")) {
            sscanf(line, "%*s %lu", &pages);
            pages += pages & 1;
            char *p = mmap(NULL, pages * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) { printf("err %d\n", errno); continue; }
            int rc = 0;
            for (unsigned long i = 0; i < pages && rc == 0; i += 2)
                rc = mprotect(p + i * page, page, PROT_READ);
            if (rc) printf("err %d\n", errno);
            else printf("%lx\n", (unsigned long)p);
        } else if (!strcmp(cmd, "exit")) {
            return 0;
        } else {
            printf("err unknown\n");
        }
    }
    return 0;
}
