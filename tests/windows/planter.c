/* Plants a known address-space layout, then reports its own VirtualQueryEx walk.
 *
 *   planter.exe FILE     (FILE: a path for the file view)
 *
 * Prints "plant NAME HEX" for what it planted and "pid N", then serves stdin lines:
 *   walk  -> "region BASE ALLOCBASE ALLOCPROTECT SIZE STATE PROTECT TYPE NAME" for every
 *            region from the minimum to the maximum application address (hex; NAME is
 *            GetMappedFileNameW's answer, or "-"), then "end"
 *   info  -> "info PAGESIZE GRANULARITY MINADDRESS MAXADDRESS" (GetSystemInfo, hex)
 *   small N -> N more separate 4 KiB allocations (each takes a 64 KiB granule); "ok"
 *   carve -> reserves every other 16 MiB of each free region, leaving no free block of
 *            32 MiB or more (for 32-bit programs: a 64-bit one's range is too large);
 *            "ok N" with the number of reservations
 *   exit  -> ends the process
 * End of input ends the process too.
 */
#include <windows.h>
#include <psapi.h>
#include <stdio.h>
#include <string.h>

#define MAX_REGIONS 65536
static MEMORY_BASIC_INFORMATION regions[MAX_REGIONS];
static WCHAR wide[32768];
static char narrow[4 * 32768];

static void plant(const char *name, void *address)
{
    printf("plant %s %llx\n", name, (unsigned long long)(ULONG_PTR)address);
}

static void *must(void *p, const char *what)
{
    if (!p) {
        printf("error %s %lu\n", what, GetLastError());
        fflush(stdout);
        ExitProcess(1);
    }
    return p;
}

static void walk(void)
{
    SYSTEM_INFO info;
    size_t count = 0;
    GetSystemInfo(&info);
    /* Record first, print after: printing must not change what is recorded. */
    char *address = info.lpMinimumApplicationAddress;
    while (address < (char *)info.lpMaximumApplicationAddress && count < MAX_REGIONS) {
        if (!VirtualQuery(address, &regions[count], sizeof(regions[count]))) break;
        address = (char *)regions[count].BaseAddress + regions[count].RegionSize;
        count++;
    }
    for (size_t i = 0; i < count; i++) {
        MEMORY_BASIC_INFORMATION *m = &regions[i];
        const char *name = "-";
        if (m->Type == MEM_IMAGE || m->Type == MEM_MAPPED) {
            DWORD n = GetMappedFileNameW(GetCurrentProcess(), m->BaseAddress, wide, 32768);
            if (n && WideCharToMultiByte(CP_UTF8, 0, wide, n, narrow, sizeof(narrow) - 1, NULL, NULL)) {
                narrow[WideCharToMultiByte(CP_UTF8, 0, wide, n, NULL, 0, NULL, NULL)] = 0;
                name = narrow;
            }
        }
        printf("region %llx %llx %lx %llx %lx %lx %lx %s\n",
               (unsigned long long)(ULONG_PTR)m->BaseAddress,
               (unsigned long long)(ULONG_PTR)m->AllocationBase, m->AllocationProtect,
               (unsigned long long)m->RegionSize, m->State, m->Protect, m->Type, name);
    }
    printf("end\n");
    fflush(stdout);
}

#define CARVE 0x1000000

static void carve(void)
{
    SYSTEM_INFO info;
    MEMORY_BASIC_INFORMATION m;
    unsigned count = 0;
    GetSystemInfo(&info);
    char *address = info.lpMinimumApplicationAddress;
    while (address < (char *)info.lpMaximumApplicationAddress && VirtualQuery(address, &m, sizeof(m))) {
        char *end = (char *)m.BaseAddress + m.RegionSize;
        if (m.State == MEM_FREE) {
            char *block = (char *)(((ULONG_PTR)m.BaseAddress + 0xFFFF) & ~(ULONG_PTR)0xFFFF);
            for (; block + CARVE <= end; block += 2 * CARVE)
                if (VirtualAlloc(block, CARVE, MEM_RESERVE, PAGE_NOACCESS)) count++;
        }
        address = end;
    }
    printf("ok %u\n", count);
    fflush(stdout);
}

int wmain(int argc, WCHAR **argv)
{
    DWORD old;
    if (argc < 2) return 2;

    /* (a) a 16 KiB reservation with its second page committed */
    char *reserved = must(VirtualAlloc(NULL, 0x4000, MEM_RESERVE, PAGE_READWRITE), "reserve");
    must(VirtualAlloc(reserved + 0x1000, 0x1000, MEM_COMMIT, PAGE_READWRITE), "commit");
    plant("reserved", reserved);

    /* (b) two 4 KiB allocations: each takes 64 KiB of address space */
    plant("small1", must(VirtualAlloc(NULL, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "small1"));
    plant("small2", must(VirtualAlloc(NULL, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "small2"));

    /* (c) protection modifiers, a decommitted page and a split by VirtualProtect */
    plant("guard", must(VirtualAlloc(NULL, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_GUARD), "guard"));
    plant("nocache", must(VirtualAlloc(NULL, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_NOCACHE), "nocache"));
    plant("writecombine", must(VirtualAlloc(NULL, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE | PAGE_WRITECOMBINE), "writecombine"));
    plant("executable", must(VirtualAlloc(NULL, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_EXECUTE_READWRITE), "executable"));
    char *decommitted = must(VirtualAlloc(NULL, 0x3000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "decommit");
    if (!VirtualFree(decommitted + 0x1000, 0x1000, MEM_DECOMMIT)) must(NULL, "VirtualFree");
    plant("decommitted", decommitted);
    char *split = must(VirtualAlloc(NULL, 0x3000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "split");
    if (!VirtualProtect(split + 0x1000, 0x1000, PAGE_READONLY, &old)) must(NULL, "VirtualProtect");
    plant("split", split);

    /* (d) a shared and a copy-on-write view of one file; the images */
    HANDLE file = CreateFileW(argv[1], GENERIC_READ | GENERIC_WRITE, 0, NULL, CREATE_ALWAYS,
                              FILE_ATTRIBUTE_NORMAL, NULL);
    if (file == INVALID_HANDLE_VALUE) must(NULL, "CreateFileW");
    static char zeros[0x10000];
    DWORD written;
    if (!WriteFile(file, zeros, sizeof(zeros), &written, NULL)) must(NULL, "WriteFile");
    HANDLE mapping = must(CreateFileMappingW(file, NULL, PAGE_READWRITE, 0, 0, NULL), "CreateFileMappingW");
    plant("view", must(MapViewOfFile(mapping, FILE_MAP_WRITE, 0, 0, 0), "MapViewOfFile"));
    plant("cowview", must(MapViewOfFile(mapping, FILE_MAP_COPY, 0, 0, 0), "MapViewOfFile copy"));
    plant("exe", GetModuleHandleW(NULL));
    plant("kernel32", GetModuleHandleW(L"kernel32.dll"));

    printf("pid %lu\n", GetCurrentProcessId());
    fflush(stdout);

    char line[64];
    while (fgets(line, sizeof(line), stdin)) {
        unsigned n;
        if (!strncmp(line, "walk", 4)) walk();
        else if (!strncmp(line, "info", 4)) {
            SYSTEM_INFO info;
            GetSystemInfo(&info);
            printf("info %lx %lx %llx %llx\n", info.dwPageSize, info.dwAllocationGranularity,
                   (unsigned long long)(ULONG_PTR)info.lpMinimumApplicationAddress,
                   (unsigned long long)(ULONG_PTR)info.lpMaximumApplicationAddress);
            fflush(stdout);
        }
        else if (sscanf(line, "small %u", &n) == 1) {
            for (unsigned i = 0; i < n; i++)
                must(VirtualAlloc(NULL, 0x1000, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE), "small");
            printf("ok\n");
            fflush(stdout);
        }
        else if (!strncmp(line, "carve", 5)) carve();
        else if (!strncmp(line, "exit", 4)) ExitProcess(0);
    }
    return 0;
}
