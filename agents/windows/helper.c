/* The Win32 side of vmatlas's Wine seam: performs single Win32 calls on request and
 * writes back what they returned, uninterpreted (raw structures, UTF-16 text, the
 * GetLastError value). All decoding happens in Python (vmatlas.agents.windows).
 *
 * Protocol, little-endian, over the standard handles:
 *   request: u32 op, u32 length, length bytes of arguments
 *   reply:   u32 ok (the call's own success indication), u32 last_error,
 *            u32 length, length bytes of results
 * End of input ends the program.
 *
 * Build: x86_64-w64-mingw32-gcc -O2 -municode -o helper.exe helper.c -lpsapi
 */
#include <windows.h>
#include <psapi.h>
#include <tlhelp32.h>
#include <string.h>
#include <stdlib.h>

enum {
    OP_SYSTEM_INFO = 1,
    OP_PROCESSES = 2,
    OP_OPEN_PROCESS = 3,
    OP_CLOSE_HANDLE = 4,
    OP_IS_WOW64 = 5,
    OP_VIRTUAL_QUERY = 6,
    OP_VIRTUAL_QUERY_WALK = 7,
    OP_MAPPED_FILE_NAME = 8,
    OP_QUERY_DOS_DEVICE = 9,
    OP_LOGICAL_DRIVES = 10,
    OP_EXIT_CODE = 11,
    OP_IMAGE_NAME = 12,
    OP_PROCESS_TIMES = 13,
};

static HANDLE in, out;
static unsigned char *buffer;
static DWORD capacity;

static int read_exact(void *dst, DWORD size)
{
    unsigned char *p = dst;
    while (size) {
        DWORD got = 0;
        if (!ReadFile(in, p, size, &got, NULL) || !got) return 0;
        p += got;
        size -= got;
    }
    return 1;
}

static void write_exact(const void *src, DWORD size)
{
    const unsigned char *p = src;
    while (size) {
        DWORD put = 0;
        if (!WriteFile(out, p, size, &put, NULL) || !put) ExitProcess(2);
        p += put;
        size -= put;
    }
}

static void reply(DWORD ok, DWORD error, const void *data, DWORD size)
{
    DWORD header[3] = {ok ? 1 : 0, error, size};
    write_exact(header, sizeof(header));
    if (size) write_exact(data, size);
}

static void reserve(DWORD size)
{
    if (size <= capacity) return;
    while (capacity < size) capacity = capacity ? capacity * 2 : 65536;
    buffer = realloc(buffer, capacity);
    if (!buffer) ExitProcess(3);
}

static UINT64 arg64(const unsigned char *args, DWORD length, DWORD index)
{
    UINT64 value = 0;
    if ((index + 1) * 8 <= length) memcpy(&value, args + index * 8, 8);
    return value;
}

static HANDLE handle_arg(const unsigned char *args, DWORD length)
{
    return (HANDLE)(ULONG_PTR)arg64(args, length, 0);
}

static void do_processes(void)
{
    PROCESSENTRY32W entry;
    DWORD used = 0;
    HANDLE snapshot = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
    if (snapshot == INVALID_HANDLE_VALUE) {
        reply(0, GetLastError(), NULL, 0);
        return;
    }
    entry.dwSize = sizeof(entry);
    BOOL more = Process32FirstW(snapshot, &entry);
    while (more) {
        reserve(used + sizeof(entry));
        memcpy(buffer + used, &entry, sizeof(entry));
        used += sizeof(entry);
        entry.dwSize = sizeof(entry);
        more = Process32NextW(snapshot, &entry);
    }
    DWORD error = GetLastError();
    CloseHandle(snapshot);
    reply(error == ERROR_NO_MORE_FILES, error, buffer, used);
}

/* Every VirtualQueryEx record from start up to end, in one reply. The only thing read
 * from a record is where the next one begins. */
static void do_walk(HANDLE process, UINT64 start, UINT64 end)
{
    MEMORY_BASIC_INFORMATION mbi;
    DWORD used = 0;
    UINT64 address = start;
    while (address < end) {
        SIZE_T got = VirtualQueryEx(process, (LPCVOID)(ULONG_PTR)address, &mbi, sizeof(mbi));
        if (!got) {
            reply(0, GetLastError(), buffer, used);
            return;
        }
        reserve(used + sizeof(mbi));
        memcpy(buffer + used, &mbi, sizeof(mbi));
        used += sizeof(mbi);
        UINT64 next = (UINT64)(ULONG_PTR)mbi.BaseAddress + mbi.RegionSize;
        if (next <= address) break;
        address = next;
    }
    reply(1, 0, buffer, used);
}

static void serve(DWORD op, unsigned char *args, DWORD length)
{
    switch (op) {
    case OP_SYSTEM_INFO: {
        SYSTEM_INFO info;
        GetSystemInfo(&info);
        reply(1, 0, &info, sizeof(info));
        return;
    }
    case OP_PROCESSES:
        do_processes();
        return;
    case OP_OPEN_PROCESS: {
        HANDLE h = OpenProcess((DWORD)arg64(args, length, 0), FALSE, (DWORD)arg64(args, length, 1));
        UINT64 value = (UINT64)(ULONG_PTR)h;
        reply(h != NULL, h ? 0 : GetLastError(), &value, sizeof(value));
        return;
    }
    case OP_CLOSE_HANDLE: {
        BOOL ok = CloseHandle(handle_arg(args, length));
        reply(ok, ok ? 0 : GetLastError(), NULL, 0);
        return;
    }
    case OP_IS_WOW64: {
        BOOL wow64 = FALSE;
        BOOL ok = IsWow64Process(handle_arg(args, length), &wow64);
        reply(ok, ok ? 0 : GetLastError(), &wow64, sizeof(wow64));
        return;
    }
    case OP_VIRTUAL_QUERY: {
        MEMORY_BASIC_INFORMATION mbi;
        SIZE_T got = VirtualQueryEx(handle_arg(args, length),
                                    (LPCVOID)(ULONG_PTR)arg64(args, length, 1), &mbi, sizeof(mbi));
        reply(got != 0, got ? 0 : GetLastError(), &mbi, got ? sizeof(mbi) : 0);
        return;
    }
    case OP_VIRTUAL_QUERY_WALK:
        do_walk(handle_arg(args, length), arg64(args, length, 1), arg64(args, length, 2));
        return;
    case OP_MAPPED_FILE_NAME: {
        reserve(32768 * sizeof(WCHAR));
        DWORD n = GetMappedFileNameW(handle_arg(args, length),
                                     (LPVOID)(ULONG_PTR)arg64(args, length, 1),
                                     (WCHAR *)buffer, 32768);
        reply(n != 0, n ? 0 : GetLastError(), buffer, n * sizeof(WCHAR));
        return;
    }
    case OP_QUERY_DOS_DEVICE: {
        /* The argument is a NUL-terminated UTF-16 device name such as "C:". */
        WCHAR name[64] = {0};
        memcpy(name, args, length < sizeof(name) - sizeof(WCHAR) ? length : sizeof(name) - sizeof(WCHAR));
        reserve(32768 * sizeof(WCHAR));
        DWORD n = QueryDosDeviceW(name, (WCHAR *)buffer, 32768);
        reply(n != 0, n ? 0 : GetLastError(), buffer, n * sizeof(WCHAR));
        return;
    }
    case OP_LOGICAL_DRIVES: {
        DWORD mask = GetLogicalDrives();
        reply(mask != 0, mask ? 0 : GetLastError(), &mask, sizeof(mask));
        return;
    }
    case OP_EXIT_CODE: {
        DWORD code = 0;
        BOOL ok = GetExitCodeProcess(handle_arg(args, length), &code);
        reply(ok, ok ? 0 : GetLastError(), &code, sizeof(code));
        return;
    }
    case OP_IMAGE_NAME: {
        reserve(32768 * sizeof(WCHAR));
        DWORD size = 32768;
        BOOL ok = QueryFullProcessImageNameW(handle_arg(args, length), 0, (WCHAR *)buffer, &size);
        reply(ok, ok ? 0 : GetLastError(), buffer, ok ? size * sizeof(WCHAR) : 0);
        return;
    }
    case OP_PROCESS_TIMES: {
        FILETIME times[4];
        BOOL ok = GetProcessTimes(handle_arg(args, length), &times[0], &times[1], &times[2], &times[3]);
        reply(ok, ok ? 0 : GetLastError(), times, ok ? sizeof(times) : 0);
        return;
    }
    default:
        reply(0, ERROR_INVALID_FUNCTION, NULL, 0);
    }
}

int wmain(void)
{
    in = GetStdHandle(STD_INPUT_HANDLE);
    out = GetStdHandle(STD_OUTPUT_HANDLE);
    for (;;) {
        DWORD header[2];
        if (!read_exact(header, sizeof(header))) return 0;
        unsigned char *args = malloc(header[1] ? header[1] : 1);
        if (!args || (header[1] && !read_exact(args, header[1]))) return 0;
        serve(header[0], args, header[1]);
        free(args);
    }
}
