/* vmatlas._native: the optional C loops of the capture path.
 *
 * Only loops live here: scanning /proc/PID/maps and smaps text into columns, gathering
 * per-distinct values back into per-region columns, tallying and pattern-matching
 * columns for the summary, writing protobuf wire bytes from a field list and reading
 * them back, and checking a received region table. Every rule those loops serve (what
 * a perms text means, how a path is classified, which regions are guards, which field
 * number a column has, which values a column may hold) is decided in Python and
 * handed in.
 *
 * Convention: a function returns None when its input is outside what it handles (a
 * value that does not fit 64 bits, text that is not perfectly regular, a column of an
 * unexpected type); the caller then runs the pure-Python loop on the same input, so
 * both paths give the same result, the same table or the same exception.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#ifndef _WIN32
#include <unistd.h>
#endif

/* -- growable byte buffer ------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

static int buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_put(buf_t *b, const void *src, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, src, n);
    b->len += n;
    return 0;
}

static void buf_free(buf_t *b) {
    PyMem_Free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* -- typed columns --------------------------------------------------------------------
 * Numeric region columns travel as array.array objects ('Q' for addresses, offsets,
 * devices and inodes, 'B' for the small enums): one machine word or byte a value, read
 * by the loops below through the buffer protocol, with no Python int per value. */

static PyObject *array_type; /* array.array, imported once */

/* A new array.array of ``typecode`` holding a copy of ``n`` bytes at ``data``. */
static PyObject *new_array(const char *typecode, const void *data, size_t n) {
    PyObject *arr = PyObject_CallFunction(array_type, "s", typecode);
    if (arr == NULL || n == 0) return arr;
    PyObject *view = PyMemoryView_FromMemory((char *)data, (Py_ssize_t)n, PyBUF_READ);
    PyObject *done = view == NULL ? NULL : PyObject_CallMethod(arr, "frombytes", "O", view);
    Py_XDECREF(view);
    if (done == NULL) {
        Py_DECREF(arr);
        return NULL;
    }
    Py_DECREF(done);
    return arr;
}

/* An array.array as CPython lays it out (Modules/arraymodule.c, unchanged from 3.8 to
 * 3.13). It is not public: array_adopts says, from arrays made and looked at when the
 * module loads, whether this interpreter's arrays are laid out so; where they are, a
 * column the scan wrote is handed to its array as it is (both PyMem memory) instead of
 * copied, and otherwise copied. */
typedef struct {
    PyObject_VAR_HEAD
    char *ob_item;
    Py_ssize_t allocated;
    const void *ob_descr;
    PyObject *weakreflist;
    Py_ssize_t ob_exports;
} array_layout_t;

static int array_adopts;

static void check_array_layout(void) {
    array_adopts = 0;
    PyObject *empty = PyObject_CallFunction(array_type, "s", "Q");
    PyObject *three = PyObject_CallFunction(array_type, "sy", "B", "\x01\x02\x03");
    if (empty != NULL && three != NULL) {
        array_layout_t *e = (array_layout_t *)empty, *t = (array_layout_t *)three;
        array_adopts = Py_SIZE(e) == 0 && e->ob_item == NULL && e->allocated == 0 &&
                       e->weakreflist == NULL && e->ob_exports == 0 && Py_SIZE(t) == 3 &&
                       t->ob_item != NULL && memcmp(t->ob_item, "\x01\x02\x03", 3) == 0 &&
                       t->allocated >= 3 && t->allocated < 64 && t->weakreflist == NULL &&
                       t->ob_exports == 0 && e->ob_descr != t->ob_descr;
    }
    Py_XDECREF(empty);
    Py_XDECREF(three);
    PyErr_Clear();
}

/* A new array.array of ``typecode`` (items of ``size`` bytes) holding the bytes of
 * ``b``, which it takes over where it can (``b`` is then empty). */
static PyObject *array_of(const char *typecode, int size, buf_t *b) {
    if (!array_adopts || b->data == NULL || b->len % (size_t)size || b->cap % (size_t)size)
        return new_array(typecode, b->data, b->len);
    PyObject *arr = PyObject_CallFunction(array_type, "s", typecode);
    if (arr == NULL) return NULL;
    array_layout_t *a = (array_layout_t *)arr;
    a->ob_item = b->data;
    a->allocated = (Py_ssize_t)(b->cap / (size_t)size);
    Py_SET_SIZE(a, (Py_ssize_t)(b->len / (size_t)size));
    b->data = NULL;
    b->len = b->cap = 0;
    return arr;
}

/* The item size of an unsigned array typecode this module writes; 0 for any other. */
static int typecode_size(const char *typecode) {
    if (typecode[0] == '\0' || typecode[1] != '\0') return 0;
    switch (typecode[0]) {
    case 'B': return 1;
    case 'H': return 2;
    case 'I': return 4;
    case 'Q': return 8;
    default: return 0;
    }
}

/* Store v (which fits) as an unsigned item of ``size`` bytes at p. */
static inline void put_unsigned(char *p, int size, uint64_t v) {
    switch (size) {
    case 1: *(uint8_t *)p = (uint8_t)v; break;
    case 2: { uint16_t x = (uint16_t)v; memcpy(p, &x, 2); break; }
    case 4: { uint32_t x = (uint32_t)v; memcpy(p, &x, 4); break; }
    default: memcpy(p, &v, 8); break;
    }
}

/* -- the maps line grammar --------------------------------------------------------------
 * The same language as linux._MAPS_LINE, one line (no '\n') at a time:
 *   [0-9a-f]+ '-' [0-9a-f]+ ' ' [-r][-w][-x][ps] ' ' [0-9a-f]+ ' ' REST
 *   REST = [0-9a-f]+ ':' [0-9a-f]+ ' ' [0-9]+ ANYTHING
 */

/* Digit values of lowercase hex ([0-9a-f], as the grammar has it); 0xff for the rest. */
static unsigned char HEX[256];

static void init_hex(void) {
    memset(HEX, 0xff, sizeof HEX);
    for (int c = '0'; c <= '9'; c++) HEX[c] = (unsigned char)(c - '0');
    for (int c = 'a'; c <= 'f'; c++) HEX[c] = (unsigned char)(c - 'a' + 10);
}

static inline int is_hex(unsigned char c) { return HEX[c] != 0xff; }
static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

typedef struct {
    const char *start, *end, *offset, *rest;
    Py_ssize_t start_n, end_n, offset_n, rest_n;
    /* The values of start, end and offset where they fit 64 bits (``big`` says not). */
    uint64_t start_v, end_v, offset_v;
    int big;
    unsigned bits; /* r=1 w=2 x=4 s=8: the order of the perms text's letters */
} maps_line_t;

static const char *hex_run(const char *q, const char *e) {
    while (q < e && is_hex((unsigned char)*q)) q++;
    return q;
}

#if (defined(__GNUC__) || defined(__clang__)) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HEX_WORDS 1
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* 0x80 in each byte of w that is a lowercase hex digit ([0-9a-f]), 0 in the others. */
static inline uint64_t hex_bytes(uint64_t w) {
    uint64_t low = w & ~HIGHS; /* bytes of 0x80 and above are no digit: cleared below */
    uint64_t digit = (low + (0x80 - '0') * ONES) & ((0x80 + '9') * ONES - low);
    uint64_t letter = (low + (0x80 - 'a') * ONES) & ((0x80 + 'f') * ONES - low);
    return (digit | letter) & ~w & HIGHS;
}

/* The value of the n (1 to 8) hex digits in the low bytes of w, the first the most
 * significant. */
static inline uint64_t hex_word(uint64_t w, int n) {
    uint64_t x = (w & 0x0F * ONES) + 9 * ((w >> 6) & ONES); /* '0'->0 .. 'f'->15 */
    x <<= 8 * (8 - n); /* leading zero digits: the first digit in the lowest byte */
    x = (x << 4 | x >> 8) & 0x00FF00FF00FF00FFULL;  /* digit pairs */
    x = (x << 8 | x >> 16) & 0x0000FFFF0000FFFFULL; /* four digits */
    return (x << 16 | x >> 32) & 0xFFFFFFFFULL;
}

/* hex_value of a run of 1 to 16 digits with 16 bytes to read at q, eight digits at a
 * time; NULL where the run is longer (or empty) and the digit loop must decide. */
static inline const char *hex_value_words(const char *q, uint64_t *v) {
    uint64_t a, b;
    memcpy(&a, q, 8);
    memcpy(&b, q + 8, 8);
    uint64_t not_a = ~hex_bytes(a) & HIGHS;
    if (not_a) {
        int n = __builtin_ctzll(not_a) >> 3;
        if (n == 0) return NULL;
        *v = hex_word(a, n);
        return q + n;
    }
    uint64_t not_b = ~hex_bytes(b) & HIGHS;
    if (!not_b) return NULL; /* 16 digits or more */
    int n = __builtin_ctzll(not_b) >> 3;
    *v = n ? hex_word(a, 8) << (4 * n) | hex_word(b, n) : hex_word(a, 8);
    return q + 8 + n;
}
#endif

/* A run of hex digits from q, its value in *v; sets *big when it needs over 64 bits. */
static const char *hex_value(const char *q, const char *e, uint64_t *v, int *big) {
#ifdef HEX_WORDS
    if (e - q >= 16) {
        const char *r = hex_value_words(q, v);
        if (r != NULL) return r;
    }
#endif
    uint64_t x = 0;
    for (; q < e; q++) {
        unsigned d = HEX[(unsigned char)*q];
        if (d == 0xff) break;
        if (x >> 60) *big = 1;
        x = x << 4 | d;
    }
    *v = x;
    return q;
}

static int match_maps_line(const char *p, const char *e, maps_line_t *m) {
    const char *q = p, *r;
    m->big = 0;
    r = hex_value(q, e, &m->start_v, &m->big);
    if (r == q || r >= e || *r != '-') return 0;
    m->start = q;
    m->start_n = r - q;
    q = r + 1;
    r = hex_value(q, e, &m->end_v, &m->big);
    if (r == q || r >= e || *r != ' ') return 0;
    m->end = q;
    m->end_n = r - q;
    q = r + 1;
    if (e - q < 5) return 0;
    if ((q[0] != '-' && q[0] != 'r') || (q[1] != '-' && q[1] != 'w') ||
        (q[2] != '-' && q[2] != 'x') || (q[3] != 'p' && q[3] != 's') || q[4] != ' ')
        return 0;
    m->bits = (q[0] == 'r') | (q[1] == 'w') << 1 | (q[2] == 'x') << 2 | (q[3] == 's') << 3;
    q += 5;
    r = hex_value(q, e, &m->offset_v, &m->big);
    if (r == q || r >= e || *r != ' ') return 0;
    m->offset = q;
    m->offset_n = r - q;
    q = r + 1;
    m->rest = q;
    r = hex_run(q, e);
    if (r == q || r >= e || *r != ':') return 0;
    q = r + 1;
    r = hex_run(q, e);
    if (r == q || r >= e || *r != ' ') return 0;
    q = r + 1;
    r = q;
    while (r < e && is_digit((unsigned char)*r)) r++;
    if (r == q) return 0;
    m->rest_n = e - m->rest;
    return 1;
}

#ifdef HEX_WORDS
/* The digits of a number read before and its value, so that a later number with the
 * same digits is not read again: a region's start is most often the end of the one
 * before, and its offset the offset before (0 for every anonymous region). The first
 * n (1 to 16) of 16 bytes from the digits on are compared (masks ma and mb); n 0 for
 * none kept. */
typedef struct {
    uint64_t a, b, ma, mb, v;
    int n;
} known_hex_t;

static inline uint64_t low_bytes(int n) {
    return n >= 8 ? ~0ULL : n <= 0 ? 0 : (1ULL << (8 * n)) - 1;
}

static inline void known_hex_keep(known_hex_t *k, const char *q, int n, uint64_t v) {
    memcpy(&k->a, q, 8);
    memcpy(&k->b, q + 8, 8);
    k->ma = low_bytes(n);
    k->mb = low_bytes(n - 8);
    k->v = v;
    k->n = n;
}

/* Where the digits at q (16 bytes to read) are those of ``k``, their value in *v and
 * the address after them; else NULL. The digits that follow are q's own only when the
 * byte after them is no digit: the caller's check of its separator there makes sure. */
static inline const char *known_hex_at(const known_hex_t *k, const char *q, uint64_t *v) {
    uint64_t x, y;
    memcpy(&x, q, 8);
    memcpy(&y, q + 8, 8);
    if (k->n == 0 || (((x ^ k->a) & k->ma) | ((y ^ k->b) & k->mb)) != 0) return NULL;
    *v = k->v;
    return q + k->n;
}
#else
typedef int known_hex_t;
#endif

/* Distinct rests, keyed by their bytes inside the scanned text. */
typedef struct {
    const char *p;
    Py_ssize_t n;
    uint32_t index;
    int used;
} slot_t;

typedef struct {
    slot_t *slots;
    size_t cap, count;
} intern_t;

static uint64_t hash_bytes(const char *p, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
    return h;
}

static int intern_grow(intern_t *t) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    slot_t *slots = PyMem_Calloc(cap, sizeof(slot_t));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < t->cap; i++) {
        if (!t->slots[i].used) continue;
        size_t j = hash_bytes(t->slots[i].p, t->slots[i].n) & (cap - 1);
        while (slots[j].used) j = (j + 1) & (cap - 1);
        slots[j] = t->slots[i];
    }
    PyMem_Free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

/* The index of rest [p, p+n), numbering a new one t->count, and its slot (valid until
 * the next call), whose p the caller may point at a lasting copy. -1 on error. */
static int64_t intern(intern_t *t, const char *p, Py_ssize_t n, int *is_new, slot_t **slot) {
    if ((t->count + 1) * 2 > t->cap && intern_grow(t) < 0) return -1;
    size_t j = hash_bytes(p, n) & (t->cap - 1);
    *slot = NULL;
    while (t->slots[j].used) {
        if (t->slots[j].n == n && memcmp(t->slots[j].p, p, (size_t)n) == 0) {
            *is_new = 0;
            *slot = &t->slots[j];
            return t->slots[j].index;
        }
        j = (j + 1) & (t->cap - 1);
    }
    t->slots[j].used = 1;
    t->slots[j].p = p;
    t->slots[j].n = n;
    t->slots[j].index = (uint32_t)t->count;
    *is_new = 1;
    *slot = &t->slots[j];
    return (int64_t)t->count++;
}

static int append_new(PyObject *list, PyObject *item) {
    if (item == NULL) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

/* scan_maps(data: bytes, facts_of, fact_count: int)
 *   -> (starts, ends, offsets, bits, rest_index, rests, rest_bits, facts) | None
 *
 * Every line of ``data`` that matches the maps grammar, in order (other lines are
 * skipped, as re.findall skips them): start, end and offset as array('Q') columns; the
 * perms as one byte of bits per region; the rest of the line as an index (uint32,
 * native order) into ``rests``, its distinct values in order of first use; and for
 * each rest the set of perms bits it appears with, as a 16-bit mask. ``facts_of(rest)``
 * is called once for each distinct rest as it is first seen, and must give a tuple of
 * ``fact_count`` values (``facts``, in rest order): the caller spreads them over the
 * regions afterwards, by the index. None when a number needs more than 64 bits (the
 * pure parse then reads the text). */

/* The maps scanner: fed one line at a time (no '\n'), so that the same loop reads a
 * whole text in memory (scan_maps) or a file as it is read (scan_maps_fd). A distinct
 * rest is looked up by the bytes object handed out for it, never by the text: the
 * text need not outlive its line. */
typedef struct {
    buf_t starts, ends, offsets; /* uint64_t each */
    buf_t bits, index;
    PyObject *rests;
    intern_t table;
    uint16_t *masks;
    size_t masks_cap;
    const char *last_rest; /* the previous line's rest (inside its bytes in rests) */
    Py_ssize_t last_n;
    uint32_t last_index;
    PyObject *facts_of; /* rest -> tuple of fact_count values (borrowed) */
    Py_ssize_t fact_count;
    PyObject *facts; /* per rest: its tuple of facts */
    int big;         /* a number past 64 bits was seen: the scan gives up */
    size_t room;     /* lines the columns have room for without growing */
    uint64_t perms_text[2]; /* the last two perms texts met (5 bytes, the space too) */
    unsigned perms_bits[2]; /* ... and their bits; 16 for none */
    known_hex_t end_text, offset_text; /* the last end and offset read (maps_scan_fast) */
} maps_scan_t;

static int maps_scan_init(maps_scan_t *st, size_t lines, PyObject *facts_of,
                          Py_ssize_t fact_count) {
    memset(st, 0, sizeof *st);
    st->last_n = -1;
    st->perms_bits[0] = st->perms_bits[1] = 16;
    if (!PyCallable_Check(facts_of) || fact_count < 0) {
        PyErr_SetString(PyExc_TypeError, "scan_maps wants (data, callable, count)");
        return -1;
    }
    st->facts_of = facts_of;
    st->fact_count = fact_count;
    st->rests = PyList_New(0);
    st->facts = PyList_New(0);
    if (st->rests == NULL || st->facts == NULL) return -1;
    size_t words = lines * sizeof(uint64_t);
    if (buf_reserve(&st->starts, words) < 0 || buf_reserve(&st->ends, words) < 0 ||
        buf_reserve(&st->offsets, words) < 0 || buf_reserve(&st->bits, lines) < 0 ||
        buf_reserve(&st->index, lines * 4) < 0)
        return -1;
    return 0;
}

/* The facts of a new rest, from the caller's function. */
static int maps_scan_new_facts(maps_scan_t *st, PyObject *rest) {
    PyObject *facts = PyObject_CallOneArg(st->facts_of, rest);
    if (facts == NULL) return -1;
    if (!PyTuple_Check(facts) || PyTuple_GET_SIZE(facts) != st->fact_count) {
        Py_DECREF(facts);
        PyErr_SetString(PyExc_TypeError, "facts_of must give a tuple of fact_count values");
        return -1;
    }
    return append_new(st->facts, facts);
}

#if defined(__GNUC__) || defined(__clang__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

/* Room made in the per-line columns: the lines they now have room for, at least one
 * (0 on error). Out of line: the loops call it once in many lines. */
static NOINLINE size_t maps_scan_grow(maps_scan_t *st) {
    if (buf_reserve(&st->starts, 8) < 0 || buf_reserve(&st->ends, 8) < 0 ||
        buf_reserve(&st->offsets, 8) < 0 || buf_reserve(&st->bits, 1) < 0 ||
        buf_reserve(&st->index, 4) < 0)
        return 0;
    size_t room = (st->starts.cap - st->starts.len) / 8;
    if ((st->ends.cap - st->ends.len) / 8 < room) room = (st->ends.cap - st->ends.len) / 8;
    if ((st->offsets.cap - st->offsets.len) / 8 < room)
        room = (st->offsets.cap - st->offsets.len) / 8;
    if (st->bits.cap - st->bits.len < room) room = st->bits.cap - st->bits.len;
    if ((st->index.cap - st->index.len) / 4 < room) room = (st->index.cap - st->index.len) / 4;
    return st->room = room;
}

/* One region's values put in the columns. */
static inline int maps_scan_put(maps_scan_t *st, uint64_t start, uint64_t end, uint64_t offset,
                                unsigned bits, uint32_t k) {
    if (st->room == 0 && maps_scan_grow(st) == 0) return -1;
    st->room--;
    st->masks[k] |= (uint16_t)(1u << bits);
    memcpy(st->starts.data + st->starts.len, &start, 8);
    st->starts.len += 8;
    memcpy(st->ends.data + st->ends.len, &end, 8);
    st->ends.len += 8;
    memcpy(st->offsets.data + st->offsets.len, &offset, 8);
    st->offsets.len += 8;
    st->bits.data[st->bits.len++] = (char)bits;
    memcpy(st->index.data + st->index.len, &k, 4);
    st->index.len += 4;
    return 0;
}

/* Whether n bytes at a and b are equal: a word at a time, inline (most rests are short
 * and equal to the line before's, where a call to memcmp costs more than the compare). */
static inline int same_bytes(const char *a, const char *b, size_t n) {
    uint64_t x, y;
    while (n >= 8) {
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) return 0;
        a += 8;
        b += 8;
        n -= 8;
    }
    while (n--)
        if (*a++ != *b++) return 0;
    return 1;
}

/* A line that matched the maps grammar (m), as maps_scan_line takes it. */
static int maps_scan_matched(maps_scan_t *st, const maps_line_t *mp) {
    const maps_line_t m = *mp;
    if (st->big) return 0;
    if (m.big) {
        st->big = 1;
        return 0;
    }
    uint32_t k;
    if (st->last_n == m.rest_n && same_bytes(st->last_rest, m.rest, (size_t)m.rest_n)) {
        k = st->last_index; /* the common case: the line before had the same rest */
    } else {
        int is_new;
        slot_t *slot;
        int64_t found = intern(&st->table, m.rest, m.rest_n, &is_new, &slot);
        if (found < 0) return -1;
        k = (uint32_t)found;
        if (is_new) {
            PyObject *rest = PyBytes_FromStringAndSize(m.rest, m.rest_n);
            if (append_new(st->rests, rest) < 0) return -1;
            slot->p = PyBytes_AS_STRING(rest); /* the list keeps it */
            if (maps_scan_new_facts(st, rest) < 0) return -1;
            if (k >= st->masks_cap) {
                size_t cap = st->masks_cap ? st->masks_cap * 2 : 64;
                uint16_t *grown = PyMem_Realloc(st->masks, cap * sizeof(uint16_t));
                if (grown == NULL) {
                    PyErr_NoMemory();
                    return -1;
                }
                memset(grown + st->masks_cap, 0, (cap - st->masks_cap) * sizeof(uint16_t));
                st->masks = grown;
                st->masks_cap = cap;
            }
        }
        st->last_rest = slot->p;
        st->last_n = m.rest_n;
        st->last_index = k;
    }
    return maps_scan_put(st, m.start_v, m.end_v, m.offset_v, m.bits, k);
}

static int maps_scan_line(maps_scan_t *st, const char *p, const char *e) {
    maps_line_t m;
    if (st->big || !match_maps_line(p, e, &m)) return 0;
    return maps_scan_matched(st, &m);
}

/* The bytes a line at p must have after it for maps_scan_fast: its numbers are read
 * 16 bytes at a time, and none of them is longer. */
#define FAST_MARGIN 128

/* The line at p (FAST_MARGIN bytes to read), scanned as maps_scan_line would, where it
 * is shaped as most are: numbers of at most 16 digits, and the rest of the line before
 * it ('\n' after it) again. 1 (*next the line after), 0 where the line is not such
 * (nothing of the scan changed but its known numbers: the caller scans it line by
 * line), -1 on error. Each number is matched or read 8 digits at a time, and the end of
 * the line found by its rest, without looking for the '\n' first. */
static int maps_scan_fast(maps_scan_t *st, const char *p, const char *stop, const char **next) {
#ifdef HEX_WORDS
    if (st->big || st->last_n < 0 || stop - p < FAST_MARGIN) return 0;
    uint64_t start, end, offset;
    const char *q = known_hex_at(&st->end_text, p, &start), *r;
    if (q == NULL && (q = hex_value_words(p, &start)) == NULL) return 0;
    if (*q != '-') return 0;
    int start_n = (int)(q - p);
    q++;
    /* The end most often begins with the start's first eight digits (and has more):
     * only the digits after them are read. */
    uint64_t head, start_head;
    memcpy(&head, q, 8);
    memcpy(&start_head, p, 8);
    if (start_n > 8 && head == start_head) {
        uint64_t tail;
        memcpy(&tail, q + 8, 8);
        uint64_t not_tail = ~hex_bytes(tail) & HIGHS;
        if (!not_tail) return 0; /* 16 digits or more */
        int n = __builtin_ctzll(not_tail) >> 3;
        end = start >> (4 * (start_n - 8)) << (4 * n) | (n ? hex_word(tail, n) : 0);
        r = q + 8 + n;
    } else {
        r = hex_value_words(q, &end);
    }
    if (r == NULL || *r != ' ') return 0;
    known_hex_keep(&st->end_text, q, (int)(r - q), end);
    q = r + 1;
    /* The perms, most often one of the last two met (layouts alternate). */
    uint64_t perms;
    memcpy(&perms, q, 8);
    perms &= 0xFFFFFFFFFFULL;
    unsigned bits;
    if (perms == st->perms_text[0] && st->perms_bits[0] < 16) {
        bits = st->perms_bits[0];
    } else if (perms == st->perms_text[1] && st->perms_bits[1] < 16) {
        bits = st->perms_bits[1];
        st->perms_text[1] = st->perms_text[0];
        st->perms_bits[1] = st->perms_bits[0];
        st->perms_text[0] = perms;
        st->perms_bits[0] = bits;
    } else {
        if ((q[0] != '-' && q[0] != 'r') || (q[1] != '-' && q[1] != 'w') ||
            (q[2] != '-' && q[2] != 'x') || (q[3] != 'p' && q[3] != 's') || q[4] != ' ')
            return 0;
        bits = (q[0] == 'r') | (q[1] == 'w') << 1 | (q[2] == 'x') << 2 | (q[3] == 's') << 3;
        st->perms_text[1] = st->perms_text[0];
        st->perms_bits[1] = st->perms_bits[0];
        st->perms_text[0] = perms;
        st->perms_bits[0] = bits;
    }
    q += 5;
    r = known_hex_at(&st->offset_text, q, &offset);
    if (r == NULL) {
        if ((r = hex_value_words(q, &offset)) == NULL) return 0;
        known_hex_keep(&st->offset_text, q, (int)(r - q), offset);
    }
    if (*r != ' ') return 0;
    q = r + 1;
    Py_ssize_t n = st->last_n;
    if (stop - q <= n || q[n] != '\n' || !same_bytes(q, st->last_rest, (size_t)n)) return 0;
    if (maps_scan_put(st, start, end, offset, bits, st->last_index) < 0) return -1;
    *next = q + n + 1;
    return 1;
#else
    (void)st;
    (void)p;
    (void)stop;
    (void)next;
    return 0;
#endif
}

/* Scan the whole lines of [p, stop): the address of the unfinished line after them
 * (stop where there is none), or NULL on error. */
static const char *scan_lines(maps_scan_t *st, const char *p, const char *stop) {
    while (p < stop && !st->big) {
        const char *next;
        int fast = maps_scan_fast(st, p, stop, &next);
        if (fast < 0) return NULL;
        if (fast) {
            p = next;
            continue;
        }
        const char *e = memchr(p, '\n', (size_t)(stop - p));
        if (e == NULL) break;
        if (maps_scan_line(st, p, e) < 0) return NULL;
        p = e + 1;
    }
    return p;
}

static PyObject *maps_scan_result(maps_scan_t *st) {
    if (st->big) Py_RETURN_NONE;
    PyObject *starts = array_of("Q", 8, &st->starts), *ends = array_of("Q", 8, &st->ends),
             *offsets = array_of("Q", 8, &st->offsets), *rest_bits = NULL, *result = NULL;
    if (starts == NULL || ends == NULL || offsets == NULL) goto done;
    rest_bits = PyList_New((Py_ssize_t)st->table.count);
    if (rest_bits == NULL) goto done;
    for (size_t i = 0; i < st->table.count; i++) {
        PyObject *v = PyLong_FromLong(st->masks[i]);
        if (v == NULL) goto done;
        PyList_SET_ITEM(rest_bits, (Py_ssize_t)i, v);
    }
    result = Py_BuildValue("(OOOy#y#OOO)", starts, ends, offsets,
                           st->bits.data ? st->bits.data : "", (Py_ssize_t)st->bits.len,
                           st->index.data ? st->index.data : "", (Py_ssize_t)st->index.len,
                           st->rests, rest_bits, st->facts);
done:
    Py_XDECREF(starts);
    Py_XDECREF(ends);
    Py_XDECREF(offsets);
    Py_XDECREF(rest_bits);
    return result;
}

static void maps_scan_free(maps_scan_t *st) {
    buf_free(&st->starts);
    buf_free(&st->ends);
    buf_free(&st->offsets);
    buf_free(&st->bits);
    buf_free(&st->index);
    Py_CLEAR(st->facts);
    Py_CLEAR(st->rests);
    PyMem_Free(st->table.slots);
    PyMem_Free(st->masks);
}

static PyObject *scan_maps(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *text, *facts_of;
    Py_ssize_t fact_count;
    if (!PyArg_ParseTuple(args, "O!On", &PyBytes_Type, &text, &facts_of, &fact_count))
        return NULL;
    const char *data = PyBytes_AS_STRING(text);
    const char *stop = data + PyBytes_GET_SIZE(text);
    /* At most one region a line: room for that many is made at once. */
    size_t lines = 1;
    for (const char *p = data; (p = memchr(p, '\n', (size_t)(stop - p))) != NULL; p++) lines++;
    maps_scan_t st;
    PyObject *result = NULL;
    if (maps_scan_init(&st, lines, facts_of, fact_count) < 0) goto done;
    const char *p = scan_lines(&st, data, stop);
    if (p == NULL) goto done;
    /* A last line without its '\n'. */
    if (p < stop && !st.big && maps_scan_line(&st, p, stop) < 0) goto done;
    result = maps_scan_result(&st);
done:
    maps_scan_free(&st);
    return result;
}

#ifndef _WIN32
/* -- maps read and scanned at once ----------------------------------------------------
 * Reading a large process's maps is the kernel formatting it a page per read() call:
 * most of a capture's time. scan_maps_fd scans each chunk as soon as it is read, while
 * the kernel's text is still in this CPU's cache. (A thread reading ahead while this
 * one scanned saved some wall time on an idle machine, but cost more CPU than the scan
 * it overlapped: futex wakeups and every byte crossing to another CPU's cache; on a
 * busy machine it was slower both ways.) */

#define FEED_CHUNK (64 * 1024)

/* Fill ``buf`` from ``fd`` to FEED_CHUNK bytes or the end of the file (*eof). 0, or the
 * errno of a failed read. Needs no GIL. */
static int fill_chunk(int fd, char *buf, size_t *len, int *eof) {
    while (*len < FEED_CHUNK) {
        ssize_t got = read(fd, buf + *len, FEED_CHUNK - *len);
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (got == 0) {
            *eof = 1;
            return 0;
        }
        *len += (size_t)got;
    }
    return 0;
}

/* Scan the whole lines of [p, stop); a line it leaves unfinished waits in ``carry``. */
static int scan_chunk(maps_scan_t *st, buf_t *carry, const char *p, const char *stop) {
    const char *e;
    if (carry->len) {
        e = memchr(p, '\n', (size_t)(stop - p));
        if (e == NULL) return buf_put(carry, p, (size_t)(stop - p));
        if (buf_put(carry, p, (size_t)(e - p)) < 0) return -1;
        if (maps_scan_line(st, carry->data, carry->data + carry->len) < 0) return -1;
        carry->len = 0;
        p = e + 1;
    }
    if ((p = scan_lines(st, p, stop)) == NULL) return -1;
    return buf_put(carry, p, (size_t)(stop - p));
}

/* scan_maps_fd(fd: int, facts_of, fact_count) -> scan_maps' tuple | None
 * scan_maps of the file's text, read to its end a chunk at a time (the GIL let go
 * while the kernel writes each); None when it is empty or scan_maps gives up on it
 * (the caller then reads it whole). Raises OSError as os.read does. */
static PyObject *scan_maps_fd(PyObject *self, PyObject *args) {
    (void)self;
    int fd;
    PyObject *facts_of;
    Py_ssize_t fact_count;
    if (!PyArg_ParseTuple(args, "iOn", &fd, &facts_of, &fact_count)) return NULL;
    maps_scan_t st;
    buf_t carry = {0};
    int eof = 0, error = 0, seen_any = 0;
    PyObject *result = NULL;
    char *chunk = NULL;
    if (maps_scan_init(&st, 0, facts_of, fact_count) < 0) goto done;
    chunk = PyMem_Malloc(FEED_CHUNK);
    if (chunk == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    while (!eof && !st.big) {
        size_t len = 0;
        Py_BEGIN_ALLOW_THREADS
        error = fill_chunk(fd, chunk, &len, &eof);
        Py_END_ALLOW_THREADS
        if (error) {
            errno = error;
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        seen_any |= len > 0;
        if (scan_chunk(&st, &carry, chunk, chunk + len) < 0) goto done;
    }
    /* A last line without its '\n'. */
    if (carry.len && maps_scan_line(&st, carry.data, carry.data + carry.len) < 0) goto done;
    result = seen_any ? maps_scan_result(&st) : Py_NewRef(Py_None);
done:
    PyMem_Free(chunk);
    buf_free(&carry);
    maps_scan_free(&st);
    return result;
}
#endif

/* -- gathering ------------------------------------------------------------------------ */

static int index_at(const char *idx, int width, Py_ssize_t i, uint32_t *k) {
    if (width == 1) {
        *k = (unsigned char)idx[i];
    } else {
        memcpy(k, idx + (size_t)i * 4, 4);
    }
    return 0;
}

/* out[i] = values[k] (a new list's slot); IndexError when k is past the end. */
static int put_item(PyObject *out, Py_ssize_t i, PyObject *values, Py_ssize_t k) {
    if (k < 0 || k >= PyList_GET_SIZE(values)) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return -1;
    }
    PyObject *v = PyList_GET_ITEM(values, k);
    Py_INCREF(v);
    PyList_SET_ITEM(out, i, v);
    return 0;
}

/* gather(values: list, index: bytes, width: 1 | 4) -> [values[k] for k in index] */
static PyObject *gather(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *values;
    Py_buffer index;
    int width;
    if (!PyArg_ParseTuple(args, "O!y*i", &PyList_Type, &values, &index, &width)) return NULL;
    PyObject *out = NULL;
    if (width != 1 && width != 4) {
        PyErr_SetString(PyExc_ValueError, "width must be 1 or 4");
        goto done;
    }
    Py_ssize_t n = index.len / width;
    out = PyList_New(n);
    if (out == NULL) goto done;
    /* Most indices are 4 bytes wide (a rest's): that loop reads them from locals. */
    Py_ssize_t i = 0;
    if (width == 4) {
        const char *idx = index.buf;
        PyObject **from = PySequence_Fast_ITEMS(values), **to = PySequence_Fast_ITEMS(out);
        Py_ssize_t count = PyList_GET_SIZE(values);
        for (; i < n; i++) {
            uint32_t k;
            memcpy(&k, idx + (size_t)i * 4, 4);
            if ((Py_ssize_t)k >= count) break; /* put_item below says what is wrong */
            to[i] = Py_NewRef(from[k]);
        }
    }
    for (; i < n; i++) {
        uint32_t k;
        index_at(index.buf, width, i, &k);
        if (put_item(out, i, values, (Py_ssize_t)k) < 0) {
            Py_CLEAR(out);
            goto done;
        }
    }
done:
    PyBuffer_Release(&index);
    return out;
}

/* A list's values as unsigned items of ``size`` bytes: vals[k], with ok[k] 1 where
 * values[k] is an int that fits, 2 where it is None, 0 otherwise. */
static int unsigned_values(PyObject *values, int size, uint64_t **vals, char **ok) {
    Py_ssize_t n = PyList_GET_SIZE(values);
    *vals = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(uint64_t));
    *ok = PyMem_Malloc((size_t)(n ? n : 1));
    if (*vals == NULL || *ok == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    uint64_t limit = size == 8 ? UINT64_MAX : ((uint64_t)1 << (8 * size)) - 1;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *v = PyList_GET_ITEM(values, k);
        (*ok)[k] = 0;
        if (v == Py_None) {
            (*ok)[k] = 2;
        } else if (PyLong_Check(v)) {
            unsigned long long x = PyLong_AsUnsignedLongLong(v);
            if (x == (unsigned long long)-1 && PyErr_Occurred()) {
                PyErr_Clear(); /* negative or past 64 bits: does not fit */
            } else if (x <= limit) {
                (*vals)[k] = x;
                (*ok)[k] = 1;
            }
        }
    }
    return 0;
}

/* Items i.. of a spread with no fallback, an index of INDEX_Ts, items of ITEM_Ts: up
 * to the first value taken that is not an int that fits. */
#define SPREAD_RUN(INDEX_T, ITEM_T)                                         \
    do {                                                                    \
        ITEM_T *to = (ITEM_T *)items.data;                                  \
        for (; i < n; i++) {                                                \
            INDEX_T k;                                                      \
            memcpy(&k, (const char *)a.buf + (size_t)i * sizeof k, sizeof k); \
            if ((Py_ssize_t)k >= na) goto range;                            \
            if (oka[k] != 1) break;                                         \
            to[i] = (ITEM_T)va[k];                                          \
        }                                                                   \
    } while (0)

/* spread(values: list, index: bytes, width: 1 | 4, typecode: str
 *        [, fallback: list, fallback_index: bytes, fallback_width: 1 | 4])
 *   -> array.array(typecode) of values[k] for each k of the index; where that value is
 *      None, fallback[j] for the j of fallback_index at the same place. None when a
 *      value taken is not an int that fits the typecode (the caller then gathers a
 *      list); IndexError for an index past the end. */
static PyObject *spread(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *values, *fallback = NULL;
    Py_buffer a, b = {0};
    int wa, wb = 1;
    const char *typecode;
    if (!PyArg_ParseTuple(args, "O!y*is|O!y*i", &PyList_Type, &values, &a, &wa, &typecode,
                          &PyList_Type, &fallback, &b, &wb))
        return NULL;
    PyObject *out = NULL;
    uint64_t *va = NULL, *vb = NULL;
    char *oka = NULL, *okb = NULL;
    buf_t items = {0};
    int size = typecode_size(typecode);
    Py_ssize_t n = a.len / (wa ? wa : 1);
    if (size == 0 || (wa != 1 && wa != 4) || (wb != 1 && wb != 4) ||
        (fallback != NULL && b.len / wb != n)) {
        PyErr_SetString(PyExc_ValueError, "spread: typecode, widths or lengths disagree");
        goto done;
    }
    if (unsigned_values(values, size, &va, &oka) < 0) goto done;
    if (fallback != NULL && unsigned_values(fallback, size, &vb, &okb) < 0) goto done;
    if (buf_reserve(&items, (size_t)(n ? n : 1) * (size_t)size) < 0) goto done;
    Py_ssize_t na = PyList_GET_SIZE(values), nb = fallback ? PyList_GET_SIZE(fallback) : 0;
    Py_ssize_t i = 0;
    if (fallback == NULL && (size == 1 || size == 8)) {
        /* The common cases, a tight loop each: an index of bytes or uint32s, items of
         * a byte or a word. */
        if (wa == 1 && size == 1) SPREAD_RUN(uint8_t, uint8_t);
        else if (wa == 1) SPREAD_RUN(uint8_t, uint64_t);
        else if (size == 1) SPREAD_RUN(uint32_t, uint8_t);
        else SPREAD_RUN(uint32_t, uint64_t);
    } else if (fallback != NULL && size == 1 && wa == 4 && wb == 1) {
        /* A column of bytes by a uint32 index, with a fallback by a byte index (the
         * type: by file, else by perms). */
        for (; i < n; i++) {
            uint32_t k;
            memcpy(&k, (const char *)a.buf + (size_t)i * 4, 4);
            if ((Py_ssize_t)k >= na) goto range;
            uint64_t v = va[k];
            char ok = oka[k];
            if (ok == 2) {
                k = ((const uint8_t *)b.buf)[i];
                if ((Py_ssize_t)k >= nb) goto range;
                v = vb[k];
                ok = okb[k];
            }
            if (ok != 1) break;
            ((uint8_t *)items.data)[i] = (uint8_t)v;
        }
    }
    for (; i < n; i++) {
        uint32_t k;
        index_at(a.buf, wa, i, &k);
        if ((Py_ssize_t)k >= na) goto range;
        uint64_t v = va[k];
        char ok = oka[k];
        if (ok == 2 && fallback != NULL) {
            index_at(b.buf, wb, i, &k);
            if ((Py_ssize_t)k >= nb) goto range;
            v = vb[k];
            ok = okb[k];
        }
        if (ok != 1) {
            out = Py_NewRef(Py_None);
            goto done;
        }
        put_unsigned(items.data + (size_t)i * (size_t)size, size, v);
    }
    items.len = (size_t)n * (size_t)size;
    out = array_of(typecode, size, &items);
    goto done;
range:
    PyErr_SetString(PyExc_IndexError, "spread index out of range");
done:
    PyMem_Free(va);
    PyMem_Free(vb);
    PyMem_Free(oka);
    PyMem_Free(okb);
    buf_free(&items);
    PyBuffer_Release(&a);
    if (fallback != NULL) PyBuffer_Release(&b);
    return out;
}

/* -- smaps ---------------------------------------------------------------------------- */

static inline int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* A field line as the kernel prints it: the name padded with spaces to 16 columns, a
 * number right-aligned in 8 more, then the rest (" kB\n" for the sizes, "\n" for a
 * count). Where the first block's line at a position has that shape, the lines at the
 * same position in later blocks are checked against it a machine word at a time; a
 * line that does not fit goes through smaps_line as the first block's did, so the
 * words only ever take lines that smaps_line takes, with the same value. */
#define HEAD_BYTES 16
#define SLOT_BYTES 8
#define TAIL_MAX 8

typedef struct {
    uint64_t head[2];    /* the first HEAD_BYTES bytes of the line */
    uint64_t last_slot;  /* the number's 8 bytes last read, and their value */
    uint64_t last_v;
    char tail[TAIL_MAX]; /* what follows the number, its '\n' included */
    int tail_n;
    Py_ssize_t len;      /* the line with its '\n'; 0: this position has no template */
} template_t;

static const uint64_t WORD_ONES = 0x0101010101010101ULL, WORD_HIGHS = 0x8080808080808080ULL;

/* 0x80 in each byte of x that is zero, 0 in the others (exactly: no carries). */
static inline uint64_t zero_bytes(uint64_t x) {
    return ~(((x & ~WORD_HIGHS) + ~WORD_HIGHS) | x) & WORD_HIGHS;
}

/* The value of the 8 bytes of x (in memory order): spaces, then 1 to 8 decimal digits.
 * 0 when they are; -1 when they are anything else. */
static inline int slot_value(uint64_t x, uint64_t *v) {
    uint64_t low = x & (WORD_ONES * 0x0F);
    uint64_t digits = zero_bytes((x & (WORD_ONES * 0xF0)) ^ (WORD_ONES * 0x30)) &
                      ~(((low + WORD_ONES * 0x06) & (WORD_ONES * 0x10)) << 3);
    uint64_t spaces = zero_bytes(x ^ (WORD_ONES * 0x20));
    if ((digits | spaces) != WORD_HIGHS || !(digits >> 63)) return -1;
    uint64_t run = (spaces >> 7) * 0xFF; /* 0xff a space */
    if (run & (run + 1)) return -1;      /* a space after a digit */
    /* A space's low nibble is 0: the number as 8 digits, the first the most significant. */
    low = (low * 10 + (low >> 8)) & 0x00FF00FF00FF00FFULL;
    low = (low * 100 + (low >> 16)) & 0x0000FFFF0000FFFFULL;
    *v = (low * 10000 + (low >> 32)) & 0xFFFFFFFFULL;
    return 0;
}

/* The smaps scanner: a state machine fed one line at a time (no '\n'), so that the
 * same rules read a whole text in memory or a file streamed through a small buffer.
 *
 * For perfectly regular smaps text only: every block is one maps header line and the
 * same field lines in the same order, no field line looks like a header, every field
 * named in ``keys`` appears at most once a block and reads "NAME: <spaces> DIGITS kB".
 * Anything else makes it irregular, and the caller gives None. */
/* Room made at once for each key's values (and the header lines' columns): as many
 * blocks as a process has regions under the kernel's default limit (vm.max_map_count,
 * 65530). Memory that is not written is not faulted in, so a small process costs no
 * more; a large one's values are never copied to grow, and the arrays take the
 * buffers over as they are. */
#define ROWS 65536

typedef struct {
    PyObject *keys;    /* tuple of bytes */
    Py_ssize_t nkeys;
    buf_t *values;      /* per key: its value of each block, uint64 */
    size_t blocks, room; /* blocks so far; blocks the buffers have room for */
    char *found;        /* per key: whether the blocks have it */
    char **names;       /* per field position of a block: the name with its ':' (copied) */
    Py_ssize_t *name_n;
    int *slot;          /* per field position: the key it fills, or -1 */
    template_t *templates; /* per field position */
    Py_ssize_t width;   /* lines a block, fixed by the first block */
    Py_ssize_t cap, j;  /* j: the position in the current block of the next line */
    int phase;          /* 0 before the first header, 1 in the first block, 2 after */
    int irregular;
    maps_scan_t maps;   /* the header lines, scanned as maps lines */
} smaps_t;

static int smaps_init(smaps_t *st, PyObject *keys, PyObject *facts_of, Py_ssize_t fact_count) {
    memset(st, 0, sizeof *st);
    if (maps_scan_init(&st->maps, ROWS, facts_of, fact_count) < 0) return -1;
    st->keys = keys;
    st->nkeys = PyTuple_GET_SIZE(keys);
    for (Py_ssize_t i = 0; i < st->nkeys; i++) {
        if (!PyBytes_Check(PyTuple_GET_ITEM(keys, i))) {
            PyErr_SetString(PyExc_TypeError, "scan_smaps keys must be bytes");
            return -1;
        }
    }
    st->found = PyMem_Calloc((size_t)st->nkeys + 1, 1);
    st->values = PyMem_Calloc((size_t)st->nkeys + 1, sizeof(buf_t));
    if (!st->found || !st->values) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void smaps_free(smaps_t *st) {
    for (Py_ssize_t k = 0; st->values != NULL && k < st->nkeys; k++) buf_free(&st->values[k]);
    PyMem_Free(st->values);
    for (Py_ssize_t j = 0; j < st->cap; j++) PyMem_Free(st->names[j]);
    PyMem_Free(st->found);
    PyMem_Free(st->names);
    PyMem_Free(st->name_n);
    PyMem_Free(st->slot);
    PyMem_Free(st->templates);
    maps_scan_free(&st->maps);
}

/* A new block: room for its value of each key. -1 on error. */
static int smaps_block(smaps_t *st) {
    if (st->blocks == st->room) {
        size_t room = st->room ? st->room * 2 : ROWS;
        for (Py_ssize_t k = 0; k < st->nkeys; k++) {
            buf_t *b = &st->values[k];
            if (buf_reserve(b, room * 8 - b->len) < 0) return -1;
        }
        st->room = room;
    }
    st->blocks++;
    for (Py_ssize_t k = 0; k < st->nkeys; k++) st->values[k].len += 8;
    return 0;
}

/* Key k's value of the current block. */
static inline void smaps_put(smaps_t *st, int k, uint64_t v) {
    memcpy(st->values[k].data + (st->blocks - 1) * 8, &v, 8);
}

/* The template of position j from its line [p, e) in the first block (see template_t);
 * its len stays 0 where the line is not of that shape. */
static void smaps_learn(smaps_t *st, const char *p, const char *e) {
    Py_ssize_t j = st->j, n = e - p + 1; /* with the '\n' */
    template_t *t = &st->templates[j];
    memset(t, 0, sizeof *t);
#ifndef HEX_WORDS
    return; /* the words are read as a little-endian machine reads them */
#endif
    if (n <= HEAD_BYTES + SLOT_BYTES || n > HEAD_BYTES + SLOT_BYTES + TAIL_MAX ||
        st->name_n[j] > HEAD_BYTES || is_hex((unsigned char)p[0]))
        return; /* a line starting with a hex digit might be a header */
    if (st->slot[j] >= 0) {
        /* A value to read: the head is the name and at least one space, and the tail is
         * " kB", so that the words take only what smaps_value takes. */
        if (st->name_n[j] >= HEAD_BYTES || n != HEAD_BYTES + SLOT_BYTES + 4 ||
            memcmp(p + HEAD_BYTES + SLOT_BYTES, " kB", 3) != 0)
            return;
        for (Py_ssize_t i = st->name_n[j]; i < HEAD_BYTES; i++)
            if (p[i] != ' ') return;
    }
    memcpy(t->head, p, HEAD_BYTES);
    t->tail_n = (int)(n - HEAD_BYTES - SLOT_BYTES);
    memcpy(t->tail, p + HEAD_BYTES + SLOT_BYTES, (size_t)t->tail_n - 1);
    t->tail[t->tail_n - 1] = '\n';
    t->len = n;
}

/* A new field position of the first block, named by [p, colon]. -1 on error. */
static int smaps_add_field(smaps_t *st, const char *p, const char *colon) {
    Py_ssize_t j = st->j;
    if (j >= st->cap) {
        Py_ssize_t cap = st->cap ? st->cap * 2 : 32;
        char **nn = PyMem_Realloc(st->names, (size_t)cap * sizeof *nn);
        if (nn == NULL) return -1;
        st->names = nn;
        for (Py_ssize_t i = st->cap; i < cap; i++) nn[i] = NULL;
        Py_ssize_t *nl = PyMem_Realloc(st->name_n, (size_t)cap * sizeof *nl);
        if (nl == NULL) return -1;
        st->name_n = nl;
        int *ns = PyMem_Realloc(st->slot, (size_t)cap * sizeof *ns);
        if (ns == NULL) return -1;
        st->slot = ns;
        template_t *nt = PyMem_Realloc(st->templates, (size_t)cap * sizeof *nt);
        if (nt == NULL) return -1;
        st->templates = nt;
        st->cap = cap;
    }
    Py_ssize_t n = colon - p + 1; /* with the ':' */
    st->names[j] = PyMem_Malloc((size_t)n);
    if (st->names[j] == NULL) return -1;
    memcpy(st->names[j], p, (size_t)n);
    st->name_n[j] = n;
    st->slot[j] = -1;
    for (Py_ssize_t k = 0; k < st->nkeys; k++) {
        PyObject *key = PyTuple_GET_ITEM(st->keys, k);
        if (PyBytes_GET_SIZE(key) == colon - p &&
            memcmp(PyBytes_AS_STRING(key), p, (size_t)(colon - p)) == 0) {
            if (st->found[k]) { /* a kept field twice a block */
                st->irregular = 1;
                return 0;
            }
            st->found[k] = 1;
            st->slot[j] = (int)k;
        }
    }
    return 0;
}

/* One field line's value, "NAME: <spaces> DIGITS kB", into its key's column. */
static int smaps_value(smaps_t *st, const char *p, const char *e) {
    Py_ssize_t j = st->j;
    int k = st->slot[j];
    const char *q = p + st->name_n[j];
    if (q >= e || !is_space((unsigned char)*q)) goto irregular;
    while (q < e && is_space((unsigned char)*q)) q++;
    const char *digits = q;
    uint64_t v = 0;
    while (q < e && is_digit((unsigned char)*q)) v = v * 10 + (uint64_t)(*q++ - '0');
    if (q == digits || q - digits > 15) goto irregular;
    if (e - q != 3 || memcmp(q, " kB", 3) != 0) goto irregular;
    smaps_put(st, k, v * 1024);
    return 0;
irregular:
    st->irregular = 1;
    return 0;
}

/* Feed one line [p, e). -1 on error; st->irregular once the text is not regular. */
static int smaps_line(smaps_t *st, const char *p, const char *e) {
    maps_line_t m;
    int header = match_maps_line(p, e, &m);
    if (st->phase == 0 || (st->phase == 1 && header) || (st->phase == 2 && st->j == st->width)) {
        if (!header) goto irregular;
        if (st->phase == 1) st->width = st->j;
        st->phase = st->phase ? 2 : 1;
        if (maps_scan_matched(&st->maps, &m) < 0) {
            /* A decision refused the header (a device number past what the system
             * takes): the whole-text parse decides, which first checks the blocks. */
            if (!PyErr_ExceptionMatches(PyExc_Exception) ||
                PyErr_ExceptionMatches(PyExc_MemoryError))
                return -1;
            PyErr_Clear();
            goto irregular;
        }
        if (st->maps.big) goto irregular; /* the whole-text parse reads such numbers */
        if (smaps_block(st) < 0) return -1;
        st->j = 1;
        return 0;
    }
    if (header) goto irregular;
    if (st->phase == 1) {
        const char *colon = memchr(p, ':', (size_t)(e - p));
        if (colon == NULL || colon == p) goto irregular;
        if (smaps_add_field(st, p, colon) < 0) return -1;
        if (st->irregular) return 0;
        smaps_learn(st, p, e);
    } else if (e - p < st->name_n[st->j] || memcmp(p, st->names[st->j], (size_t)st->name_n[st->j])) {
        goto irregular;
    }
    if (st->slot[st->j] >= 0 && smaps_value(st, p, e) < 0) return -1;
    st->j++;
    return 0;
irregular:
    st->irregular = 1;
    return 0;
}

/* The field lines of a later block from p on, while each fits its position's template
 * (or, where the value is not kept, starts with its name) and ends before ``stop``:
 * where they stop (the header of the next block, a line that smaps_line must read, or
 * one that runs past ``stop``). Room for a value of each key was made at the header. */
static const char *smaps_fast(smaps_t *st, const char *p, const char *stop) {
    Py_ssize_t j = st->j;
    for (; j < st->width; j++) {
        template_t *t = &st->templates[j];
        int k = st->slot[j];
        if (t->len == 0 || stop - p < t->len) {
            /* A line of its own length, whose value is not kept: only its name counts,
             * and a line whose first byte is no hex digit is no header. */
            Py_ssize_t n = st->name_n[j];
            const char *e;
            if (k >= 0 || stop - p <= n || is_hex((unsigned char)p[0]) ||
                memcmp(p, st->names[j], (size_t)n) != 0 ||
                (e = memchr(p + n, '\n', (size_t)(stop - p - n))) == NULL)
                break;
            p = e + 1;
            continue;
        }
        uint64_t h0, h1, x;
        memcpy(&h0, p, 8);
        memcpy(&h1, p + 8, 8);
        memcpy(&x, p + HEAD_BYTES, 8);
        if (h0 != t->head[0] || h1 != t->head[1]) break;
        const char *tail = p + HEAD_BYTES + SLOT_BYTES;
        if (t->tail_n == 4) {
            uint32_t a, b;
            memcpy(&a, tail, 4);
            memcpy(&b, t->tail, 4);
            if (a != b) break;
        } else {
            int i = 0;
            while (i < t->tail_n && tail[i] == t->tail[i]) i++;
            if (i < t->tail_n) break;
        }
        if (k >= 0) {
            if (x != t->last_slot) {
                uint64_t v;
                if (slot_value(x, &v) < 0) break;
                t->last_slot = x;
                t->last_v = v * 1024;
            }
            smaps_put(st, k, t->last_v);
        } else if (zero_bytes(x ^ (WORD_ONES * '\n'))) {
            break; /* the line ends sooner */
        }
        p += t->len;
    }
    st->j = j;
    return p;
}

/* The whole lines of [p, stop) fed in turn: where the unfinished last line starts (or
 * where the text stopped being regular). NULL on error. */
static const char *smaps_feed(smaps_t *st, const char *p, const char *stop) {
    while (!st->irregular) {
        if (st->phase == 2) p = smaps_fast(st, p, stop);
        const char *e = memchr(p, '\n', (size_t)(stop - p));
        if (e == NULL) break;
        if (smaps_line(st, p, e) < 0) return NULL;
        p = e + 1;
    }
    return p;
}

/* An array('Q') of key k's values, which takes their buffer over where it can. */
static PyObject *smaps_column(smaps_t *st, Py_ssize_t k) {
    return array_of("Q", 8, &st->values[k]);
}

/* (scan_maps' tuple of the header lines, columns) at the end of the text, or None when
 * it was not regular (or empty, or its last block short). */
static PyObject *smaps_result(smaps_t *st) {
    if (st->irregular || st->phase == 0 || (st->phase == 2 && st->j != st->width))
        Py_RETURN_NONE;
    PyObject *columns = PyList_New(st->nkeys);
    if (columns == NULL) return NULL;
    for (Py_ssize_t k = 0; k < st->nkeys; k++) {
        PyObject *col = st->found[k] ? smaps_column(st, k) : Py_NewRef(Py_None);
        if (col == NULL) {
            Py_DECREF(columns);
            return NULL;
        }
        PyList_SET_ITEM(columns, k, col);
    }
    PyObject *headers = maps_scan_result(&st->maps);
    if (headers == NULL) {
        Py_DECREF(columns);
        return NULL;
    }
    return Py_BuildValue("(NN)", headers, columns);
}

/* scan_smaps(data: bytes, keys: tuple[bytes, ...], facts_of, fact_count)
 *   -> (headers, columns) | None
 *
 * The header lines as scan_maps scans them (``headers``, its tuple, with the same
 * ``facts_of`` and ``fact_count``) and, per key, its column in bytes as an array('Q')
 * (None for a key the text does not have); None where the text is not perfectly
 * regular (see smaps_t) or a header holds a number past 64 bits. Lines are what
 * bytes.split(b"\n") makes of the text without its final '\n'. */
static PyObject *scan_smaps(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *data_obj, *keys, *facts_of;
    Py_ssize_t fact_count;
    if (!PyArg_ParseTuple(args, "O!O!On", &PyBytes_Type, &data_obj, &PyTuple_Type, &keys,
                          &facts_of, &fact_count))
        return NULL;
    smaps_t st;
    PyObject *result = NULL;
    if (smaps_init(&st, keys, facts_of, fact_count) < 0) goto done;
    const char *data = PyBytes_AS_STRING(data_obj);
    const char *stop = data + PyBytes_GET_SIZE(data_obj);
    const char *p = smaps_feed(&st, data, stop);
    if (p == NULL) goto done;
    /* A last line without its '\n'. */
    if (p < stop && !st.irregular && smaps_line(&st, p, stop) < 0) goto done;
    result = smaps_result(&st);
done:
    smaps_free(&st);
    return result;
}

#ifndef _WIN32
/* scan_smaps_fd(fd: int, keys, facts_of, fact_count) -> (headers, columns) | bytes | None
 *
 * scan_smaps of the file's text, read to its end through a buffer that is used again
 * and again once full (the text of a large process is tens of megabytes; it is never
 * held whole), without the GIL while reading. Where scan_smaps would give None (text
 * that is not regular, or empty), the text itself, as long as none of it was let go (a
 * text that fits the buffer, or one found irregular before the buffer first filled:
 * the rest is then kept too), for the whole-text parse to decide without reading the
 * file again; None where some was let go. Raises OSError as os.read does. */
static PyObject *scan_smaps_fd(PyObject *self, PyObject *args) {
    (void)self;
    int fd;
    PyObject *keys, *facts_of;
    Py_ssize_t fact_count;
    if (!PyArg_ParseTuple(args, "iO!On", &fd, &PyTuple_Type, &keys, &facts_of, &fact_count))
        return NULL;
    smaps_t st;
    PyObject *result = NULL;
    /* buf[0, len) is read, buf[from, len) not yet scanned; ``dropped``: some of the
     * text was let go. */
    size_t cap = 256 * 1024, len = 0, from = 0;
    char *buf = NULL;
    int dropped = 0;
    if (smaps_init(&st, keys, facts_of, fact_count) < 0) goto done;
    buf = PyMem_Malloc(cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (;;) {
        if (len == cap) {
            if (st.irregular && dropped) {
                len = from = 0; /* read to the end all the same, as a read would */
            } else if (from > 0 && !st.irregular) {
                memmove(buf, buf + from, len - from); /* the scanned lines go */
                len -= from;
                from = 0;
                dropped = 1;
            } else { /* a line longer than the buffer, or an irregular text kept whole */
                char *grown = PyMem_Realloc(buf, cap * 2);
                if (grown == NULL) {
                    PyErr_NoMemory();
                    goto done;
                }
                buf = grown;
                cap *= 2;
            }
        }
        ssize_t got;
        int saved_errno;
        Py_BEGIN_ALLOW_THREADS
        got = read(fd, buf + len, cap - len);
        saved_errno = errno;
        Py_END_ALLOW_THREADS
        if (got < 0) {
            if (saved_errno == EINTR) {
                if (PyErr_CheckSignals() < 0) goto done;
                continue;
            }
            errno = saved_errno;
            PyErr_SetFromErrno(PyExc_OSError);
            goto done;
        }
        if (got == 0) break;
        len += (size_t)got;
        if (!st.irregular) {
            const char *p = smaps_feed(&st, buf + from, buf + len);
            if (p == NULL) goto done;
            from = (size_t)(p - buf);
        }
    }
    /* A last line without its '\n'. */
    if (from < len && !st.irregular && smaps_line(&st, buf + from, buf + len) < 0) goto done;
    result = smaps_result(&st);
    if (result == Py_None && !dropped) {
        Py_DECREF(result);
        result = PyBytes_FromStringAndSize(buf, (Py_ssize_t)len);
    }
done:
    PyMem_Free(buf);
    smaps_free(&st);
    return result;
}
#endif

/* -- summary loops -------------------------------------------------------------------- */

/* CPython before 3.12 keeps an int as a signed digit count and 30-bit digits: an int
 * below 2**60 is read here without a call (addresses and sizes all are). */
#if PY_VERSION_HEX < 0x030C0000 && PYLONG_BITS_IN_DIGIT == 30
#define SMALL_LONG_FAST 1
static inline int compact_u64(PyObject *v, uint64_t *out) {
    Py_ssize_t size = Py_SIZE(v);
    const digit *d = ((PyLongObject *)v)->ob_digit;
    if (size == 0) {
        *out = 0;
        return 1;
    }
    if (size == 1) {
        *out = d[0];
        return 1;
    }
    if (size == 2) {
        *out = (uint64_t)d[0] | (uint64_t)d[1] << 30;
        return 1;
    }
    return 0;
}
#endif

static int u64_at(PyObject *list, Py_ssize_t i, uint64_t *out) {
    PyObject *v = PyList_GET_ITEM(list, i);
    if (!PyLong_CheckExact(v)) return -1;
#ifdef SMALL_LONG_FAST
    if (compact_u64(v, out)) return 0;
#endif
    int overflow;
    long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow == 0) {
        if (s < 0) return -1;
        *out = (uint64_t)s;
        return 0;
    }
    if (overflow < 0) return -1;
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *out = u;
    return 0;
}

static int small_at(PyObject *list, Py_ssize_t i, long *out) {
    PyObject *v = PyList_GET_ITEM(list, i);
    if (!PyLong_Check(v)) return -1;
#ifdef SMALL_LONG_FAST
    if (Py_SIZE(v) == 0 || Py_SIZE(v) == 1) { /* 0 <= v < 2**30 */
        *out = Py_SIZE(v) ? (long)((PyLongObject *)v)->ob_digit[0] : 0;
        return 0;
    }
#endif
    int overflow;
    long s = PyLong_AsLongAndOverflow(v, &overflow);
    if (overflow || s < INT32_MIN || s > INT32_MAX) return -1;
    *out = s;
    return 0;
}

static int same_lengths(PyObject *const *lists, int count, Py_ssize_t *n) {
    for (int i = 0; i < count; i++)
        if (!PyList_Check(lists[i])) return 0;
    *n = PyList_GET_SIZE(lists[0]);
    for (int i = 1; i < count; i++)
        if (PyList_GET_SIZE(lists[i]) != *n) return 0;
    return 1;
}

/* A column of a region table as the loops below read it: a list of ints, or a buffer
 * of native unsigned integers (array.array 'B', 'H', 'I', 'L' or 'Q'; bytes). */
typedef struct {
    PyObject *list; /* the list, or NULL for a buffer */
    Py_buffer view; /* the buffer, while held */
    int held, size;
    Py_ssize_t n;
} column_t;

/* 1 when ``obj`` is a column (opened: column_close lets it go), 0 when it is not. */
static int column_open(column_t *c, PyObject *obj) {
    memset(c, 0, sizeof *c);
    if (PyList_Check(obj)) {
        c->list = obj;
        c->n = PyList_GET_SIZE(obj);
        return 1;
    }
    if (!PyObject_CheckBuffer(obj)) return 0;
    if (PyObject_GetBuffer(obj, &c->view, PyBUF_FORMAT | PyBUF_ND) < 0) {
        PyErr_Clear();
        return 0;
    }
    c->held = 1;
    const char *f = c->view.format ? c->view.format : "B";
    if (*f == '@') f++;
    Py_ssize_t size = c->view.itemsize;
    if (c->view.ndim != 1 || f[0] == '\0' || f[1] != '\0' || strchr("BHILQ", f[0]) == NULL ||
        (size != 1 && size != 2 && size != 4 && size != 8)) {
        PyBuffer_Release(&c->view);
        c->held = 0;
        return 0;
    }
    c->size = (int)size;
    c->n = c->view.len / size;
    return 1;
}

static void column_close(column_t *c) {
    if (c->held) PyBuffer_Release(&c->view);
    c->held = 0;
}

static void columns_close(column_t *cols, int count) {
    for (int i = 0; i < count; i++) column_close(&cols[i]);
}

/* Open ``count`` columns of one length (*n): 1; 0 (none left open) when one is not a
 * column or the lengths differ. */
static int columns_open(column_t *cols, PyObject *const *objs, int count, Py_ssize_t *n) {
    for (int i = 0; i < count; i++) {
        if (!column_open(&cols[i], objs[i]) || cols[i].n != cols[0].n) {
            columns_close(cols, i + 1);
            return 0;
        }
    }
    *n = count ? cols[0].n : 0;
    return 1;
}

static inline uint64_t column_item(const column_t *c, Py_ssize_t i) {
    const char *p = (const char *)c->view.buf + i * c->size;
    switch (c->size) {
    case 1: return *(const uint8_t *)p;
    case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
    default: { uint64_t v; memcpy(&v, p, 8); return v; }
    }
}

/* Value i of a column as u64_at and small_at read a list's. */
static inline int col_u64(const column_t *c, Py_ssize_t i, uint64_t *out) {
    if (c->list != NULL) return u64_at(c->list, i, out);
    *out = column_item(c, i);
    return 0;
}

static inline int col_small(const column_t *c, Py_ssize_t i, long *out) {
    if (c->list != NULL) return small_at(c->list, i, out);
    uint64_t v = column_item(c, i);
    if (v > INT32_MAX) return -1;
    *out = (long)v;
    return 0;
}

/* Whether two columns opened together are both typed, of 8-byte items. */
static inline int both_words(const column_t *cols) {
    return cols[0].list == NULL && cols[1].list == NULL && cols[0].size == 8 && cols[1].size == 8;
}

/* Item i of two columns opened together (``words``: both of 8-byte items, read
 * directly), as col_u64 reads them. */
static inline int pair_at(const column_t *cols, int words, Py_ssize_t i, uint64_t *s, uint64_t *e) {
    if (words) {
        memcpy(s, (const char *)cols[0].view.buf + (size_t)i * 8, 8);
        memcpy(e, (const char *)cols[1].view.buf + (size_t)i * 8, 8);
        return 0;
    }
    return col_u64(&cols[0], i, s) < 0 || col_u64(&cols[1], i, e) < 0 ? -1 : 0;
}

/* nonzero(column) -> bool | None: any(column), for a typed column without an int made
 * per value, for a list of False and True without a call per value; None for any
 * other column. */
static PyObject *nonzero(PyObject *self, PyObject *column) {
    (void)self;
    column_t col;
    if (PyList_Check(column)) {
        /* A list of flags (the deleted column): False and True read by identity; any
         * other value leaves the answer to any(). */
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(column); i++) {
            PyObject *v = PyList_GET_ITEM(column, i);
            if (v == Py_True) Py_RETURN_TRUE;
            if (v != Py_False) Py_RETURN_NONE;
        }
        Py_RETURN_FALSE;
    }
    if (!column_open(&col, column)) Py_RETURN_NONE;
    const unsigned char *p = col.view.buf;
    size_t len = (size_t)col.n * (size_t)col.size, i = 0;
    uint64_t any = 0;
    for (; i + 4096 <= len && !any; i += 4096) /* a page at a time, a word at a time */
        for (size_t j = i; j < i + 4096; j += 8) {
            uint64_t w;
            memcpy(&w, p + j, 8);
            any |= w;
        }
    for (; i < len && !any; i++) any |= p[i];
    column_close(&col);
    return PyBool_FromLong(any != 0);
}

/* take(values: list, index: list[int]) -> [values[k] for k in index]; IndexError for
 * an index past the end (as the list comprehension raises), TypeError for one that is
 * not a non-negative int. */
static PyObject *take(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *values, *index;
    if (!PyArg_ParseTuple(args, "O!O!", &PyList_Type, &values, &PyList_Type, &index)) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(index);
    PyObject *out = PyList_New(n);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        long k;
        if (small_at(index, i, &k) < 0 || k < 0) {
            Py_DECREF(out);
            /* An int too large for a list is past its end, as the pure path says. */
            if (PyLong_Check(PyList_GET_ITEM(index, i)))
                PyErr_SetString(PyExc_IndexError, "list index out of range");
            else
                PyErr_SetString(PyExc_TypeError, "take: an index is not an int");
            return NULL;
        }
        if (put_item(out, i, values, k) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* bounds(start_deltas, sizes, shift[, in_place]) -> (starts, ends) | None
 * The region boundaries in bytes of a wire table's page columns (lists of ints or typed
 * columns), as array('Q') columns: each start is the previous end plus its delta, each
 * end its start plus its size, both columns in units of 1 << shift. None when a value
 * is not an int below 2**64, the lengths differ or a boundary passes 2**64 (the pure
 * conversion then says what is wrong). With ``in_place``, two writable columns of
 * 8-byte items are themselves made the starts and the ends (no new memory; on None
 * they hold their page values again); other columns are read into new arrays. */
static PyObject *bounds(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[2];
    int shift, in_place = 0;
    if (!PyArg_ParseTuple(args, "OOi|p", &objs[0], &objs[1], &shift, &in_place)) return NULL;
    column_t cols[2];
    Py_ssize_t n;
    if (shift < 0 || shift > 63 || !columns_open(cols, objs, 2, &n)) Py_RETURN_NONE;
    PyObject *result = NULL;
    buf_t sb = {0}, eb = {0};
    int words = both_words(cols);
    in_place = in_place && words && !cols[0].view.readonly && !cols[1].view.readonly;
    uint64_t *starts_to, *ends_to;
    if (in_place) {
        starts_to = cols[0].view.buf;
        ends_to = cols[1].view.buf;
    } else {
        if (buf_reserve(&sb, (size_t)(n ? n : 1) * 8) < 0 ||
            buf_reserve(&eb, (size_t)(n ? n : 1) * 8) < 0)
            goto done;
        starts_to = (uint64_t *)sb.data;
        ends_to = (uint64_t *)eb.data;
    }
    uint64_t end = 0, most = UINT64_MAX >> shift; /* the most that shifts within 64 bits */
    Py_ssize_t i = 0;
    for (; i < n; i++) {
        uint64_t delta, size;
        if (pair_at(cols, words, i, &delta, &size) < 0 || (delta | size) > most) break;
        uint64_t start = end + (delta << shift);
        if (start < end) break;
        uint64_t next = start + (size << shift);
        if (next < start) break;
        starts_to[i] = start;
        ends_to[i] = next;
        end = next;
    }
    if (i < n) {
        /* The page values of the rows written over put back, last first. */
        for (Py_ssize_t j = in_place ? i : 0; j-- > 0;) {
            uint64_t start = starts_to[j], next = ends_to[j], before = j ? ends_to[j - 1] : 0;
            starts_to[j] = (start - before) >> shift;
            ends_to[j] = (next - start) >> shift;
        }
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (in_place) {
        result = PyTuple_Pack(2, objs[0], objs[1]);
        goto done;
    }
    sb.len = eb.len = (size_t)n * 8;
    PyObject *starts = array_of("Q", 8, &sb), *ends = starts ? array_of("Q", 8, &eb) : NULL;
    if (ends != NULL) result = PyTuple_Pack(2, starts, ends);
    Py_XDECREF(starts);
    Py_XDECREF(ends);
done:
    buf_free(&sb);
    buf_free(&eb);
    columns_close(cols, 2);
    return result;
}

/* tally(starts, ends, page_size, *key_columns) -> {key: [count, bytes, single_pages]}
 * per distinct tuple of the key columns' values (sizes end - start), or None (also when
 * there are more than MAX_KEYS distinct keys: the pure loop then counts). */
#define MAX_KEYS 256
#define MAX_KEY_COLUMNS 8

typedef struct {
    long key[MAX_KEY_COLUMNS];
    uint64_t count, bytes, pages;
} tally_t;

/* out[key] = [count, bytes, pages]; ``key`` (a new tuple, NULL after an error) is let go. */
static int tally_put(PyObject *out, PyObject *key, uint64_t count, uint64_t bytes, uint64_t pages) {
    if (key == NULL) return -1;
    PyObject *acc = Py_BuildValue("[KKK]", (unsigned long long)count, (unsigned long long)bytes,
                                  (unsigned long long)pages);
    int rc = acc ? PyDict_SetItem(out, key, acc) : -1;
    Py_XDECREF(acc);
    Py_DECREF(key);
    return rc;
}

/* A tuple of the ``n`` values of ``key`` (ints; None for none). */
static PyObject *key_tuple(const long *key, const int *none, int n) {
    PyObject *t = PyTuple_New(n);
    for (int k = 0; t != NULL && k < n; k++) {
        PyObject *v = none[k] ? Py_NewRef(Py_None) : PyLong_FromLong(key[k]);
        if (v == NULL) Py_CLEAR(t);
        else PyTuple_SET_ITEM(t, k, v);
    }
    return t;
}

static PyObject *tally(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs < 3 || nargs > 3 + MAX_KEY_COLUMNS) {
        PyErr_SetString(PyExc_TypeError, "tally(starts, ends, page_size, *keys)");
        return NULL;
    }
    PyObject *lists[2 + MAX_KEY_COLUMNS];
    int nlists = 0;
    lists[nlists++] = PyTuple_GET_ITEM(args, 0);
    lists[nlists++] = PyTuple_GET_ITEM(args, 1);
    for (Py_ssize_t i = 3; i < nargs; i++) lists[nlists++] = PyTuple_GET_ITEM(args, i);
    unsigned long long page = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args, 2));
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t n;
    column_t cols[2 + MAX_KEY_COLUMNS];
    if (!columns_open(cols, lists, nlists, &n)) Py_RETURN_NONE;
    int nkeys = nlists - 2;
    tally_t *seen = PyMem_Calloc(MAX_KEYS, sizeof(tally_t));
    /* Open addressing over the distinct keys: slot -> index into seen, -1 when free. */
    enum { SLOTS = 4 * MAX_KEYS };
    int16_t *slots = PyMem_Malloc(SLOTS * sizeof(int16_t));
    if (seen == NULL || slots == NULL) {
        PyMem_Free(seen);
        PyMem_Free(slots);
        columns_close(cols, nlists);
        return PyErr_NoMemory();
    }
    memset(slots, 0xff, SLOTS * sizeof(int16_t));
    size_t key_bytes = (size_t)nkeys * sizeof(long);
    int nseen = 0, last = -1, prior = -1; /* the last two keys met: layouts alternate */
    /* Typed columns (the native scan's): bounds read as words, keys of a byte each
     * packed into one word and compared so. */
    int word_bounds = cols[0].list == NULL && cols[0].size == 8 && cols[1].list == NULL &&
                      cols[1].size == 8;
    int byte_keys = 1;
    for (int k = 0; k < nkeys; k++) byte_keys &= cols[2 + k].list == NULL && cols[2 + k].size == 1;
    uint64_t last_packed = 0, prior_packed = 0;
    PyObject *out = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t s, e;
        long key[MAX_KEY_COLUMNS] = {0};
        if (word_bounds) {
            memcpy(&s, (const char *)cols[0].view.buf + i * 8, 8);
            memcpy(&e, (const char *)cols[1].view.buf + i * 8, 8);
        } else if (col_u64(&cols[0], i, &s) < 0 || col_u64(&cols[1], i, &e) < 0) {
            goto none;
        }
        if (e < s) goto none;
        int j = last;
        uint64_t packed = 0;
        if (byte_keys) {
            for (int k = 0; k < nkeys; k++)
                packed |= (uint64_t)((const uint8_t *)cols[2 + k].view.buf)[i] << (8 * k);
            if (last >= 0 && packed == last_packed) goto add;
            if (prior >= 0 && packed == prior_packed) {
                j = prior;
                prior = last;
                last = j;
                prior_packed = last_packed;
                last_packed = packed;
                goto add;
            }
            for (int k = 0; k < nkeys; k++) key[k] = (long)(packed >> (8 * k) & 0xff);
        } else {
            for (int k = 0; k < nkeys; k++)
                if (col_small(&cols[2 + k], i, &key[k]) < 0) goto none;
        }
        if (j >= 0 && memcmp(seen[j].key, key, key_bytes) == 0) {
            /* the same key as the region before */
        } else if (prior >= 0 && memcmp(seen[prior].key, key, key_bytes) == 0) {
            j = prior;
            prior = last;
            last = j;
        } else {
            uint64_t h = 1469598103934665603ULL;
            for (int k = 0; k < nkeys; k++) h = (h ^ (uint64_t)key[k]) * 1099511628211ULL;
            size_t slot = (size_t)(h ^ h >> 29) & (SLOTS - 1);
            while ((j = slots[slot]) >= 0 && memcmp(seen[j].key, key, key_bytes) != 0)
                slot = (slot + 1) & (SLOTS - 1);
            if (j < 0) {
                if (nseen == MAX_KEYS) goto none;
                j = nseen++;
                memcpy(seen[j].key, key, sizeof key);
                slots[slot] = (int16_t)j;
            }
            prior = last;
            last = j;
        }
        prior_packed = last_packed;
        last_packed = packed;
    add:;
        uint64_t size = e - s;
        if (seen[j].bytes + size < seen[j].bytes) goto none; /* a sum beyond 64 bits */
        seen[j].count++;
        seen[j].bytes += size;
        seen[j].pages += size == page;
    }
    out = PyDict_New();
    if (out == NULL) goto done;
    for (int j = 0; j < nseen; j++) {
        static const int no_nones[MAX_KEY_COLUMNS];
        if (tally_put(out, key_tuple(seen[j].key, no_nones, nkeys), seen[j].count, seen[j].bytes,
                      seen[j].pages) < 0)
            goto fail;
    }
    goto done;
none:
    out = Py_NewRef(Py_None);
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyMem_Free(seen);
    PyMem_Free(slots);
    columns_close(cols, nlists);
    return out;
}

/* walk(starts, ends, page_size, max_bytes, free_state, [range_min, range_max],
 *      *key_columns) -> ({key: [count, bytes, single_pages]}, (free_bytes, largest)) | None
 * What tally, free_gaps (its totals) and the guard walk each take from a table, in one
 * pass over its typed columns (array('Q') bounds, array('B') keys, the first key the
 * state, as the native scan lays them out). Each region is tallied under its keys'
 * values and one more: the state of the next region where that starts at its end and
 * this one is at most max_bytes long, else None. None for columns of other types, more
 * than MAX_KEYS distinct keys, or where tally or free_gaps give None. */
#define WALK_KEYS 6

typedef struct {
    uint64_t key, count, bytes, pages;
} walk_slot_t;

static PyObject *walk(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    if (nargs < 7 || nargs > 6 + WALK_KEYS) {
        PyErr_SetString(PyExc_TypeError,
                        "walk(starts, ends, page_size, max_bytes, free_state, range, *keys)");
        return NULL;
    }
    unsigned long long page = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args, 2));
    unsigned long long max_bytes = page == (unsigned long long)-1 && PyErr_Occurred()
                                       ? 0
                                       : PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args, 3));
    long free_state = PyErr_Occurred() ? 0 : PyLong_AsLong(PyTuple_GET_ITEM(args, 4));
    if (PyErr_Occurred()) return NULL;
    PyObject *range_objs = PyTuple_GET_ITEM(args, 5);
    uint64_t range_min, range_max;
    if (!PyList_Check(range_objs) || PyList_GET_SIZE(range_objs) != 2 ||
        u64_at(range_objs, 0, &range_min) < 0 || u64_at(range_objs, 1, &range_max) < 0)
        Py_RETURN_NONE;
    PyObject *lists[2 + WALK_KEYS];
    int nlists = 0;
    lists[nlists++] = PyTuple_GET_ITEM(args, 0);
    lists[nlists++] = PyTuple_GET_ITEM(args, 1);
    for (Py_ssize_t i = 6; i < nargs; i++) lists[nlists++] = PyTuple_GET_ITEM(args, i);
    int nkeys = nlists - 2;
    Py_ssize_t n;
    column_t cols[2 + WALK_KEYS];
    if (!columns_open(cols, lists, nlists, &n)) Py_RETURN_NONE;
    int typed = cols[0].list == NULL && cols[0].size == 8 && cols[1].list == NULL &&
                cols[1].size == 8;
    for (int k = 0; k < nkeys; k++) typed &= cols[2 + k].list == NULL && cols[2 + k].size == 1;
    if (!typed) {
        columns_close(cols, nlists);
        Py_RETURN_NONE;
    }
    const uint64_t *S = cols[0].view.buf, *E = cols[1].view.buf;
    const uint8_t *K[WALK_KEYS];
    for (int k = 0; k < nkeys; k++) K[k] = cols[2 + k].view.buf;
    walk_slot_t *seen = PyMem_Calloc(MAX_KEYS, sizeof(walk_slot_t));
    enum { SLOTS = 4 * MAX_KEYS };
    int16_t *slots = PyMem_Malloc(SLOTS * sizeof(int16_t));
    PyObject *out = NULL;
    if (seen == NULL || slots == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(slots, 0xff, SLOTS * sizeof(int16_t));
    /* The next region's state sits above the keys, with a bit saying it is there. */
    const int next_shift = 8 * nkeys;
    int nseen = 0, last = -1, prior = -1; /* the last two keys met: layouts alternate */
    uint64_t cursor = range_min, total = 0, largest = 0;
    int free_done = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t s, e;
        memcpy(&s, S + i, 8);
        memcpy(&e, E + i, 8);
        if (e < s) goto none;
        uint64_t key = 0;
        if (nkeys == 4) { /* a summary's: state, kind, type, protection */
            key = (uint64_t)K[0][i] | (uint64_t)K[1][i] << 8 | (uint64_t)K[2][i] << 16 |
                  (uint64_t)K[3][i] << 24;
        } else {
            for (int k = 0; k < nkeys; k++) key |= (uint64_t)K[k][i] << (8 * k);
        }
        uint64_t size = e - s;
        if (i + 1 < n && size <= max_bytes) {
            uint64_t s2;
            memcpy(&s2, S + i + 1, 8);
            if (s2 == e) key |= (uint64_t)(0x100 | K[0][i + 1]) << next_shift;
        }
        int j;
        if (last >= 0 && seen[last].key == key) {
            j = last;
        } else if (prior >= 0 && seen[prior].key == key) {
            j = prior;
            prior = last;
            last = j;
        } else {
            uint64_t h = key * 0x9E3779B97F4A7C15ULL;
            size_t slot = (size_t)(h >> 40) & (SLOTS - 1);
            while ((j = slots[slot]) >= 0 && seen[j].key != key) slot = (slot + 1) & (SLOTS - 1);
            if (j < 0) {
                if (nseen == MAX_KEYS) goto none;
                j = nseen++;
                seen[j].key = key;
                slots[slot] = (int16_t)j;
            }
            prior = last;
            last = j;
        }
        if (seen[j].bytes + size < seen[j].bytes) goto none; /* a sum beyond 64 bits */
        seen[j].count++;
        seen[j].bytes += size;
        seen[j].pages += size == page;
        /* free_gaps' walk, its totals */
        if (free_done || (long)K[0][i] == free_state || e <= cursor) continue;
        if (s >= range_max) s = e = range_max;
        if (s > cursor) {
            if (total + (s - cursor) < total) goto none;
            total += s - cursor;
            if (s - cursor > largest) largest = s - cursor;
        }
        if (s >= range_max) free_done = 1;
        cursor = e;
    }
    if (!free_done && range_max > cursor) {
        if (total + (range_max - cursor) < total) goto none;
        total += range_max - cursor;
        if (range_max - cursor > largest) largest = range_max - cursor;
    }
    PyObject *tallied = PyDict_New();
    if (tallied == NULL) goto done;
    for (int j = 0; j < nseen; j++) {
        long key[WALK_KEYS + 1];
        int none[WALK_KEYS + 1] = {0};
        for (int k = 0; k <= nkeys; k++) key[k] = (long)(seen[j].key >> (8 * k) & 0xff);
        none[nkeys] = !(seen[j].key >> next_shift & 0x100);
        if (tally_put(tallied, key_tuple(key, none, nkeys + 1), seen[j].count, seen[j].bytes,
                      seen[j].pages) < 0) {
            Py_DECREF(tallied);
            goto done;
        }
    }
    out = Py_BuildValue("(N(KK))", tallied, (unsigned long long)total,
                        (unsigned long long)largest);
    goto done;
none:
    out = Py_NewRef(Py_None);
done:
    PyMem_Free(seen);
    PyMem_Free(slots);
    columns_close(cols, nlists);
    return out;
}

/* followed_by(starts, ends, states, types, protections, own, max_bytes, next_states
 *             [, count])
 *   -> indices i where (states[i], types[i], protections[i]) is in the set ``own``,
 *      ends[i] - starts[i] <= max_bytes, and region i + 1 starts at ends[i] with a state
 *      in the set ``next_states``; with a true ``count``, how many there are; or None. */
typedef struct {
    long a[3];
    int in;
} known_t;

/* Whether ``key`` (``nkey`` values) is in ``set``: asked of Python once per distinct key
 * (up to MAX_KEYS of them; beyond, once per call). -1 on error. */
static int member(PyObject *set, const long *key, int nkey, known_t *known, int *nknown) {
    for (int j = 0; j < *nknown; j++)
        if (memcmp(known[j].a, key, sizeof known[j].a) == 0) return known[j].in;
    PyObject *t = nkey == 1 ? PyLong_FromLong(key[0])
                            : Py_BuildValue("(lll)", key[0], key[1], key[2]);
    if (t == NULL) return -1;
    int in = PySet_Contains(set, t);
    Py_DECREF(t);
    if (in >= 0 && *nknown < MAX_KEYS) {
        memcpy(known[*nknown].a, key, sizeof known[*nknown].a);
        known[(*nknown)++].in = in;
    }
    return in;
}

static PyObject *followed_by(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *lists[5], *own, *next_states, *max_obj;
    int count_only = 0;
    if (!PyArg_ParseTuple(args, "OOOOOO!O!O!|p", &lists[0], &lists[1], &lists[2], &lists[3],
                          &lists[4], &PyFrozenSet_Type, &own, &PyLong_Type, &max_obj,
                          &PyFrozenSet_Type, &next_states, &count_only))
        return NULL;
    uint64_t max_bytes = PyLong_AsUnsignedLongLong(max_obj);
    if (PyErr_Occurred()) return NULL;
    Py_ssize_t n;
    column_t cols[5];
    if (!columns_open(cols, lists, 5, &n)) Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    Py_ssize_t found = 0;
    known_t *known = PyMem_Calloc(2 * MAX_KEYS, sizeof(known_t));
    if (out == NULL || known == NULL) {
        Py_XDECREF(out);
        PyMem_Free(known);
        columns_close(cols, 5);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    known_t *known_next = known + MAX_KEYS;
    int nknown = 0, nknown_next = 0;
    /* The answers for the last two attribute triples met (layouts alternate), packed a
     * byte each where the columns are typed bytes (the native scan's). */
    int byte_attrs = 1, seen_last = 0, seen_prior = 0, last_in = 0, prior_in = 0;
    for (int k = 2; k < 5; k++) byte_attrs &= cols[k].list == NULL && cols[k].size == 1;
    uint64_t last_packed = 0, prior_packed = 0;
    for (Py_ssize_t i = 0; i + 1 < n; i++) {
        long a[3] = {0, 0, 0};
        uint64_t packed = 0;
        if (byte_attrs) {
            for (int k = 0; k < 3; k++)
                packed |= (uint64_t)((const uint8_t *)cols[2 + k].view.buf)[i] << (8 * k);
            for (int k = 0; k < 3; k++) a[k] = (long)(packed >> (8 * k) & 0xff);
        } else {
            for (int k = 0; k < 3; k++)
                if (col_small(&cols[2 + k], i, &a[k]) < 0) goto none;
            /* Triples of values past a byte are not cached: packed stays ambiguous. */
            seen_last = seen_prior = 0;
        }
        int is_in;
        if (seen_last && packed == last_packed) {
            is_in = last_in;
        } else if (seen_prior && packed == prior_packed) {
            is_in = prior_in;
            prior_packed = last_packed;
            prior_in = last_in;
            last_packed = packed;
            last_in = is_in;
        } else {
            is_in = member(own, a, 3, known, &nknown);
            if (is_in < 0) goto fail;
            prior_packed = last_packed;
            prior_in = last_in;
            seen_prior = seen_last;
            last_packed = packed;
            last_in = is_in;
            seen_last = byte_attrs;
        }
        if (!is_in) continue;
        uint64_t s, e, s2;
        if (col_u64(&cols[0], i, &s) < 0 || col_u64(&cols[1], i, &e) < 0 || e < s ||
            col_u64(&cols[0], i + 1, &s2) < 0)
            goto none;
        if (e - s > max_bytes || s2 != e) continue;
        long next[3] = {0, 0, 0};
        if (col_small(&cols[2], i + 1, &next[0]) < 0) goto none;
        int ok = member(next_states, next, 1, known_next, &nknown_next);
        if (ok < 0) goto fail;
        if (!ok) continue;
        found++;
        if (!count_only && append_new(out, PyLong_FromSsize_t(i)) < 0) goto fail;
    }
    PyMem_Free(known);
    columns_close(cols, 5);
    if (count_only) {
        Py_DECREF(out);
        return PyLong_FromSsize_t(found);
    }
    return out;
none:
    PyMem_Free(known);
    columns_close(cols, 5);
    Py_DECREF(out);
    Py_RETURN_NONE;
fail:
    PyMem_Free(known);
    columns_close(cols, 5);
    Py_DECREF(out);
    return NULL;
}

/* free_gaps(starts, ends, states, free_state, [range_min, range_max][, totals])
 *   -> [(start, end)] as summary.free_gaps computes them, or with a true ``totals``
 *      (bytes of all gaps, bytes of the largest) without listing them; or None. */
static PyObject *free_gaps(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *lists[3];
    long free_state;
    PyObject *range_objs;
    int totals = 0;
    if (!PyArg_ParseTuple(args, "OOOlO|p", &lists[0], &lists[1], &lists[2], &free_state,
                          &range_objs, &totals))
        return NULL;
    uint64_t range_min, range_max;
    /* Ranges that are not 64-bit unsigned: the pure loop handles them. */
    if (!PyList_Check(range_objs) || PyList_GET_SIZE(range_objs) != 2 ||
        u64_at(range_objs, 0, &range_min) < 0 || u64_at(range_objs, 1, &range_max) < 0)
        Py_RETURN_NONE;
    Py_ssize_t n;
    column_t cols[3];
    if (!columns_open(cols, lists, 3, &n)) Py_RETURN_NONE;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        columns_close(cols, 3);
        return NULL;
    }
    uint64_t cursor = range_min, total = 0, largest = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        uint64_t s, e;
        if (i < n) {
            long state;
            if (col_small(&cols[2], i, &state) < 0 || col_u64(&cols[0], i, &s) < 0 ||
                col_u64(&cols[1], i, &e) < 0)
                goto none;
            if (state == free_state || e <= cursor) continue;
            if (s >= range_max) s = e = range_max; /* the gap up to the range's end */
        } else {
            s = e = range_max;
        }
        if (s > cursor) {
            if (totals) {
                if (total + (s - cursor) < total) goto none; /* beyond 64 bits */
                total += s - cursor;
                if (s - cursor > largest) largest = s - cursor;
            } else if (append_new(out, Py_BuildValue("(KK)", (unsigned long long)cursor,
                                                     (unsigned long long)s)) < 0) {
                goto fail;
            }
        }
        if (s >= range_max) break;
        cursor = e;
    }
    columns_close(cols, 3);
    if (totals) {
        Py_DECREF(out);
        return Py_BuildValue("(KK)", (unsigned long long)total, (unsigned long long)largest);
    }
    return out;
none:
    columns_close(cols, 3);
    Py_DECREF(out);
    Py_RETURN_NONE;
fail:
    columns_close(cols, 3);
    Py_DECREF(out);
    return NULL;
}

/* -- protobuf writing -----------------------------------------------------------------
 * Two passes over a field spec: the first checks every value and sizes every field,
 * keeping each field's payload length in the order it meets them; the second writes
 * the fields into a bytes object of exactly the total size, taking the lengths back in
 * the same order. No intermediate buffer, no copy of a nested message. */

/* How many of the ``n`` bytes at ``p`` have their high bit set (varint continuation
 * bytes), counted a word at a time. */
static size_t high_bytes(const uint8_t *p, size_t n) {
    const uint64_t pairs = 0x00FF00FF00FF00FFULL;
    size_t total = 0, i = 0;
    while (n - i >= 8) {
        /* Up to 255 words into byte lanes of at most 255 each, then summed. */
        uint64_t lanes = 0;
        size_t words = (n - i) / 8;
        if (words > 255) words = 255;
        for (size_t w = 0; w < words; w++, i += 8) {
            uint64_t x;
            memcpy(&x, p + i, 8);
            lanes += (x >> 7) & WORD_ONES;
        }
        lanes = (lanes & pairs) + ((lanes >> 8) & pairs);
        total += (size_t)((lanes * 0x0001000100010001ULL) >> 48);
    }
    for (; i < n; i++) total += p[i] >> 7;
    return total;
}

/* The varint of v written at o (room made); past its last byte. */
static inline unsigned char *varint_to(unsigned char *o, uint64_t v) {
    while (v >= 0x80) {
        *o++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *o++ = (unsigned char)v;
    return o;
}

/* The bytes of v's varint: 7 bits a byte, without a branch. */
static inline size_t varint_len(uint64_t v) {
    size_t bits = (size_t)(64 - __builtin_clzll(v | 1));
    return (bits * 9 + 64) / 64;
}

static inline size_t tag_len(uint32_t number) { return varint_len((uint64_t)number << 3); }

/* A length-delimited field's tag and length at o; past them. */
static inline unsigned char *len_field_to(unsigned char *o, uint32_t number, size_t len) {
    o = varint_to(o, (uint64_t)number << 3 | 2);
    return varint_to(o, len);
}

/* A length-delimited field's bytes in all, from its payload's. */
static inline size_t len_field_size(uint32_t number, size_t len) {
    return tag_len(number) + varint_len(len) + len;
}

/* Field kinds of an encode spec. */
enum {
    PACKED_U64 = 0,   /* list of ints, 0 <= v < 2**64, or a typed column */
    PACKED_U32 = 1,   /* list of ints, 0 <= v < 2**32 (uint32 and non-negative enums), or a typed column */
    PACKED_BOOL = 2,  /* list of True/False */
    STRINGS = 3,      /* list of str, each its own length-delimited record */
    SCALAR_U64 = 4,   /* one int */
    MESSAGE = 5,      /* a nested spec */
    INDEX_U32 = 6,    /* bytes of native uint32s */
    PAGE_COLUMNS = 7, /* (starts, ends, shift, size_number): start deltas and sizes in pages */
    RAW = 8,          /* bytes written as they are (serialized fields; the number unused) */
    BYTES = 9         /* bytes as one length-delimited field (a serialized message) */
};

/* The payload lengths of a spec's fields, in the order the sizing pass meets them. */
typedef struct {
    uint64_t *v;
    size_t n, cap, at;
} lengths_t;

/* Room for one more length: its slot, or -1. */
static Py_ssize_t lengths_push(lengths_t *l, uint64_t len) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 32;
        uint64_t *v = PyMem_Realloc(l->v, cap * sizeof *v);
        if (v == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n] = len;
    return (Py_ssize_t)l->n++;
}

static inline uint64_t lengths_next(lengths_t *l) { return l->at < l->n ? l->v[l->at++] : 0; }

/* The bytes of a typed column's items of type T as varints in *len; any ORs them. */
#define TYPED_VARINTS_LEN(T)                                                \
    do {                                                                    \
        const char *items = c->view.buf;                                    \
        for (Py_ssize_t i = 0; i < n; i++) {                                \
            T x;                                                            \
            memcpy(&x, items + (size_t)i * sizeof x, sizeof x);             \
            any |= x;                                                       \
            total += varint_len(x);                                         \
        }                                                                   \
    } while (0)

/* The payload length of a column's values as varints: 0, or -1 where a value is not an
 * int of at most ``max`` (2**32 - 1 or 2**64 - 1). */
static int column_varints_len(const column_t *c, uint64_t max, size_t *len) {
    Py_ssize_t n = c->n;
    size_t total = 0;
    uint64_t any = 0;
    if (c->list != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t v;
            if (u64_at(c->list, i, &v) < 0) return -1;
            any |= v;
            total += varint_len(v);
        }
    } else {
        switch (c->size) {
        case 1: total = (size_t)n + high_bytes(c->view.buf, (size_t)n); break;
        case 2: TYPED_VARINTS_LEN(uint16_t); break;
        case 4: TYPED_VARINTS_LEN(uint32_t); break;
        default: TYPED_VARINTS_LEN(uint64_t); break;
        }
    }
    if (any > max) return -1; /* max is 2**k - 1: some value has a bit above it */
    *len = total;
    return 0;
}

#define TYPED_VARINTS_TO(T)                                                 \
    do {                                                                    \
        const char *items = c->view.buf;                                    \
        for (Py_ssize_t i = 0; i < n; i++) {                                \
            T x;                                                            \
            memcpy(&x, items + (size_t)i * sizeof x, sizeof x);             \
            if (x < 0x80)                                                   \
                *o++ = (unsigned char)x;                                    \
            else                                                            \
                o = varint_to(o, x);                                        \
        }                                                                   \
    } while (0)

/* A column's values (sized by column_varints_len: ``len`` bytes) as varints at o. */
static unsigned char *column_varints_to(unsigned char *o, const column_t *c, size_t len) {
    Py_ssize_t n = c->n;
    if (c->list != NULL) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t v = 0;
            u64_at(c->list, i, &v); /* read in the sizing pass: it cannot fail */
            o = varint_to(o, v);
        }
        return o;
    }
    switch (c->size) {
    case 1:
        if (len == (size_t)n) { /* bytes below 0x80: their own varints */
            memcpy(o, c->view.buf, (size_t)n);
            return o + n;
        }
        TYPED_VARINTS_TO(uint8_t);
        break;
    case 2: TYPED_VARINTS_TO(uint16_t); break;
    case 4: TYPED_VARINTS_TO(uint32_t); break;
    default: TYPED_VARINTS_TO(uint64_t); break;
    }
    return o;
}

static int page_columns_open(PyObject *value, column_t *cols, Py_ssize_t *n, int *shift,
                             unsigned int *size_number, int *words) {
    PyObject *starts, *ends;
    if (!PyArg_ParseTuple(value, "OOiI", &starts, &ends, shift, size_number)) return -1;
    PyObject *lists[2] = {starts, ends};
    if (*shift < 0 || *shift > 63 || !columns_open(cols, lists, 2, n)) return 0;
    *words = both_words(cols);
    return 1;
}

static int size_spec(PyObject *spec, lengths_t *l, size_t *total, int *unsupported);

/* Field ``number`` of ``kind`` sized into *total, its lengths kept in ``l``; *unsupported
 * where a value is outside what the kind takes. */
static int size_field(uint32_t number, long kind, PyObject *value, lengths_t *l, size_t *total,
                      int *unsupported) {
    if (kind == PACKED_BOOL) {
        if (!PyList_Check(value)) goto unsupported;
        Py_ssize_t n = PyList_GET_SIZE(value);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *item = PyList_GET_ITEM(value, i);
            if (item != Py_True && item != Py_False) goto unsupported;
        }
        if (n) *total += len_field_size(number, (size_t)n);
        return lengths_push(l, (size_t)n) < 0 ? -1 : 0;
    }
    if (kind == PACKED_U64 || kind == PACKED_U32) {
        column_t col;
        size_t len;
        if (!column_open(&col, value)) goto unsupported;
        int bad = column_varints_len(&col, kind == PACKED_U32 ? UINT32_MAX : UINT64_MAX, &len);
        column_close(&col);
        if (bad) goto unsupported;
        if (len) *total += len_field_size(number, len);
        return lengths_push(l, len) < 0 ? -1 : 0;
    }
    if (kind == INDEX_U32) {
        if (!PyBytes_Check(value)) goto unsupported;
        const char *p = PyBytes_AS_STRING(value);
        Py_ssize_t n = PyBytes_GET_SIZE(value) / 4;
        size_t len = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t v;
            memcpy(&v, p + i * 4, 4);
            len += varint_len(v);
        }
        if (len) *total += len_field_size(number, len);
        return lengths_push(l, len) < 0 ? -1 : 0;
    }
    if (kind == STRINGS) {
        if (!PyList_Check(value)) goto unsupported;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(value); i++) {
            PyObject *item = PyList_GET_ITEM(value, i);
            if (!PyUnicode_Check(item)) goto unsupported;
            Py_ssize_t len;
            if (PyUnicode_AsUTF8AndSize(item, &len) == NULL) {
                PyErr_Clear(); /* lone surrogates: the pure path raises as upb does */
                goto unsupported;
            }
            *total += len_field_size(number, (size_t)len);
        }
        return 0;
    }
    if (kind == SCALAR_U64) {
        uint64_t v;
        PyObject *one = PyList_New(1);
        if (one == NULL) return -1;
        PyList_SET_ITEM(one, 0, Py_NewRef(value));
        int bad = u64_at(one, 0, &v);
        Py_DECREF(one);
        if (bad) goto unsupported;
        if (v) *total += tag_len(number) + varint_len(v);
        return lengths_push(l, v) < 0 ? -1 : 0; /* the value itself, to write */
    }
    if (kind == MESSAGE) {
        Py_ssize_t slot = lengths_push(l, 0);
        size_t len = 0;
        if (slot < 0 || size_spec(value, l, &len, unsupported) < 0) return -1;
        l->v[slot] = len;
        *total += len_field_size(number, len);
        return 0;
    }
    if (kind == PAGE_COLUMNS) {
        column_t cols[2];
        Py_ssize_t n;
        int shift, words;
        unsigned int size_number;
        int opened = page_columns_open(value, cols, &n, &shift, &size_number, &words);
        if (opened <= 0) {
            if (opened < 0) return -1;
            goto unsupported;
        }
        /* Every boundary checked, and both payloads' lengths. */
        uint64_t mask = ((uint64_t)1 << shift) - 1, previous_end = 0;
        size_t delta_len = 0, size_len = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint64_t s, e;
            if (pair_at(cols, words, i, &s, &e) < 0 || s < previous_end || e < s ||
                ((s | e) & mask)) {
                columns_close(cols, 2);
                goto unsupported; /* misaligned or overlapping: the pure path explains */
            }
            delta_len += varint_len((s - previous_end) >> shift);
            size_len += varint_len((e - s) >> shift);
            previous_end = e;
        }
        columns_close(cols, 2);
        if (n) *total += len_field_size(number, delta_len) + len_field_size(size_number, size_len);
        return lengths_push(l, delta_len) < 0 || lengths_push(l, size_len) < 0 ? -1 : 0;
    }
    if (kind == RAW || kind == BYTES) {
        if (!PyBytes_Check(value)) goto unsupported;
        size_t len = (size_t)PyBytes_GET_SIZE(value);
        *total += kind == RAW ? len : len_field_size(number, len);
        return 0;
    }
    PyErr_Format(PyExc_ValueError, "unknown field kind %ld", kind);
    return -1;
unsupported:
    *unsupported = 1;
    return 0;
}

static int size_spec(PyObject *spec, lengths_t *l, size_t *total, int *unsupported) {
    if (!PyList_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "an encode spec is a list of (number, kind, value)");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spec) && !*unsupported; i++) {
        unsigned int number;
        long kind;
        PyObject *value;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(spec, i), "IlO", &number, &kind, &value)) return -1;
        if (size_field(number, kind, value, l, total, unsupported) < 0) return -1;
    }
    return 0;
}

static unsigned char *write_spec(unsigned char *o, PyObject *spec, lengths_t *l);

/* Field ``number`` of ``kind`` (sized by size_field) written at o; past it, or NULL
 * where the spec no longer reads as it was sized. */
static unsigned char *write_field(unsigned char *o, uint32_t number, long kind, PyObject *value,
                                  lengths_t *l) {
    if (kind == PACKED_BOOL) {
        size_t n = lengths_next(l);
        if (n == 0) return o;
        o = len_field_to(o, number, n);
        for (size_t i = 0; i < n; i++) *o++ = PyList_GET_ITEM(value, (Py_ssize_t)i) == Py_True;
        return o;
    }
    if (kind == PACKED_U64 || kind == PACKED_U32) {
        size_t len = lengths_next(l);
        if (len == 0) return o;
        column_t col;
        if (!column_open(&col, value)) return NULL;
        o = column_varints_to(len_field_to(o, number, len), &col, len);
        column_close(&col);
        return o;
    }
    if (kind == INDEX_U32) {
        size_t len = lengths_next(l);
        if (len == 0) return o;
        o = len_field_to(o, number, len);
        const char *p = PyBytes_AS_STRING(value);
        Py_ssize_t n = PyBytes_GET_SIZE(value) / 4;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint32_t v;
            memcpy(&v, p + i * 4, 4);
            o = varint_to(o, v);
        }
        return o;
    }
    if (kind == STRINGS) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(value); i++) {
            Py_ssize_t len;
            const char *text = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(value, i), &len);
            if (text == NULL) return NULL;
            o = len_field_to(o, number, (size_t)len);
            memcpy(o, text, (size_t)len);
            o += len;
        }
        return o;
    }
    if (kind == SCALAR_U64) {
        uint64_t v = lengths_next(l);
        return v ? varint_to(varint_to(o, (uint64_t)number << 3), v) : o;
    }
    if (kind == MESSAGE) return write_spec(len_field_to(o, number, lengths_next(l)), value, l);
    if (kind == PAGE_COLUMNS) {
        size_t lens[2];
        lens[0] = lengths_next(l);
        lens[1] = lengths_next(l);
        column_t cols[2];
        Py_ssize_t n;
        int shift, words;
        unsigned int size_number;
        if (page_columns_open(value, cols, &n, &shift, &size_number, &words) <= 0) return NULL;
        for (int pass = 0; n && pass < 2; pass++) {
            o = len_field_to(o, pass ? size_number : number, lens[pass]);
            uint64_t previous_end = 0;
            for (Py_ssize_t i = 0; i < n; i++) {
                uint64_t s = 0, e = 0;
                pair_at(cols, words, i, &s, &e); /* read in the sizing pass: it cannot fail */
                uint64_t v = (pass ? e - s : s - previous_end) >> shift;
                if (v < 0x80)
                    *o++ = (unsigned char)v;
                else
                    o = varint_to(o, v);
                previous_end = e;
            }
        }
        columns_close(cols, 2);
        return o;
    }
    /* RAW or BYTES */
    if (kind == BYTES) o = len_field_to(o, number, (size_t)PyBytes_GET_SIZE(value));
    memcpy(o, PyBytes_AS_STRING(value), (size_t)PyBytes_GET_SIZE(value));
    return o + PyBytes_GET_SIZE(value);
}

static unsigned char *write_spec(unsigned char *o, PyObject *spec, lengths_t *l) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(spec) && o != NULL; i++) {
        unsigned int number;
        long kind;
        PyObject *value;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(spec, i), "IlO", &number, &kind, &value)) return NULL;
        o = write_field(o, number, kind, value, l);
    }
    return o;
}

/* encode(spec) -> bytes | None: a message's wire bytes from its fields, in the order
 * given: (field number, kind, value) each. None when a value is outside what the kinds
 * take (then the pure path, with its own checks and errors, runs instead). */
static PyObject *encode(PyObject *self, PyObject *spec) {
    (void)self;
    lengths_t l = {0};
    size_t total = 0;
    int unsupported = 0;
    PyObject *result = NULL;
    if (size_spec(spec, &l, &total, &unsupported) < 0) goto done;
    if (unsupported) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (total > PY_SSIZE_T_MAX) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (result == NULL) goto done;
    unsigned char *start = (unsigned char *)PyBytes_AS_STRING(result);
    unsigned char *o = write_spec(start, spec, &l);
    if (o != start + total || l.at != l.n) {
        /* Nothing runs between the passes that could change a value: a guard only. */
        Py_CLEAR(result);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "encode: the fields written differ from their sizes");
    }
done:
    PyMem_Free(l.v);
    return result;
}

/* The end of the run of rows from i that hold item i's value in column ``c`` (by
 * identity in a list, by raw value in a typed column): the first row after i, before
 * ``end``, that holds another; or ``end``. */
#define SAME_RUN(T)                                                         \
    do {                                                                    \
        const char *items = c->view.buf;                                    \
        T v, x;                                                             \
        memcpy(&v, items + (size_t)i * sizeof v, sizeof v);                 \
        for (; j < end; j++) {                                              \
            memcpy(&x, items + (size_t)j * sizeof x, sizeof x);             \
            if (x != v) break;                                              \
        }                                                                   \
    } while (0)

static Py_ssize_t same_run(const column_t *c, Py_ssize_t i, Py_ssize_t end) {
    Py_ssize_t j = i + 1;
    if (c->list != NULL) {
        PyObject *const *items = ((PyListObject *)c->list)->ob_item;
        while (j < end && items[j] == items[i]) j++;
        return j;
    }
    switch (c->size) {
    case 1: SAME_RUN(uint8_t); break;
    case 2: SAME_RUN(uint16_t); break;
    case 4: SAME_RUN(uint32_t); break;
    default: SAME_RUN(uint64_t); break;
    }
    return j;
}

/* distinct(columns: list of columns, first: tuple)
 *   -> (index: bytes of uint32, rows: list[tuple])
 * Numbers each distinct row of the columns (lists, or typed columns of unsigned ints)
 * in order of first use, ``first`` being row 0 whether used or not; None when the
 * columns differ in length. The rows after one that equal it (by identity or by raw
 * value, column by column) take its number with no row made and no hash. */
static PyObject *distinct(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *columns, *first;
    if (!PyArg_ParseTuple(args, "OO!", &columns, &PyTuple_Type, &first)) return NULL;
    if (!PyList_Check(columns) || PyList_GET_SIZE(columns) == 0 || PyList_GET_SIZE(columns) > 16) {
        PyErr_SetString(PyExc_TypeError, "distinct wants a list of 1 to 16 columns");
        return NULL;
    }
    int ncols = (int)PyList_GET_SIZE(columns);
    PyObject *lists[16];
    column_t cols[16];
    for (int c = 0; c < ncols; c++) lists[c] = PyList_GET_ITEM(columns, c);
    Py_ssize_t n;
    if (!columns_open(cols, lists, ncols, &n)) Py_RETURN_NONE;
    PyObject *seen = PyDict_New(), *rows = PyList_New(0), *result = NULL, *index = NULL;
    if (seen == NULL || rows == NULL || n > PY_SSIZE_T_MAX / 4) goto done;
    index = PyBytes_FromStringAndSize(NULL, n * 4); /* written in place, row by row */
    if (index == NULL) goto done;
    {
        PyObject *zero = PyLong_FromLong(0);
        if (zero == NULL || PyDict_SetItem(seen, first, zero) < 0 || PyList_Append(rows, first) < 0) {
            Py_XDECREF(zero);
            goto done;
        }
        Py_DECREF(zero);
    }
    char *to = PyBytes_AS_STRING(index);
    for (Py_ssize_t i = 0; i < n;) {
        uint32_t k;
        PyObject *row = PyTuple_New(ncols);
        if (row == NULL) goto done;
        for (int c = 0; c < ncols; c++) {
            PyObject *v = cols[c].list != NULL
                              ? Py_NewRef(PyList_GET_ITEM(lists[c], i))
                              : PyLong_FromUnsignedLongLong(column_item(&cols[c], i));
            if (v == NULL) {
                Py_DECREF(row);
                goto done;
            }
            PyTuple_SET_ITEM(row, c, v);
        }
        PyObject *found = PyDict_GetItemWithError(seen, row);
        if (found == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(row);
                goto done;
            }
            k = (uint32_t)PyList_GET_SIZE(rows);
            PyObject *number = PyLong_FromUnsignedLong(k);
            if (number == NULL || PyDict_SetItem(seen, row, number) < 0 ||
                PyList_Append(rows, row) < 0) {
                Py_XDECREF(number);
                Py_DECREF(row);
                goto done;
            }
            Py_DECREF(number);
        } else {
            k = (uint32_t)PyLong_AsUnsignedLong(found);
        }
        Py_DECREF(row);
        Py_ssize_t end = n;
        for (int c = 0; c < ncols && end > i + 1; c++) end = same_run(&cols[c], i, end);
        for (; i < end; i++) memcpy(to + (size_t)i * 4, &k, 4);
    }
    result = PyTuple_Pack(2, index, rows);
done:
    columns_close(cols, ncols);
    Py_XDECREF(seen);
    Py_XDECREF(rows);
    Py_XDECREF(index);
    return result;
}

/* -- protobuf reading ----------------------------------------------------------------- */

/* Field kinds of a decode spec (vmatlas/wire.py builds it from the schema). */
enum {
    D_U64 = 0,    /* repeated uint64 */
    D_U32 = 1,    /* repeated uint32 */
    D_ENUM = 2,   /* repeated enum: values 0 .. 2**31 - 1 */
    D_BOOL = 3,   /* repeated bool */
    D_STRING = 4, /* repeated string (UTF-8) */
    D_SCALAR = 5, /* one uint64: the last one read wins */
    D_MESSAGE = 6, /* a message: (spec); occurrences merge */
    D_UNREAD = 7   /* a field whose presence sends the whole message to upb */
};

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (*p >= end) return -1;
        uint8_t b = *(*p)++;
        if (shift == 63 && b > 1) return -1; /* past 64 bits */
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            return 0;
        }
    }
    return -1;
}

/* The value of one varint of a numeric kind as a Python object (new reference), or
 * NULL with *unsupported set where upb's reading of it might differ. */
/* The ints 0 .. SMALL_INTS-1, made once: most values of an enum or a small column. */
#define SMALL_INTS 256
static PyObject *small_ints[SMALL_INTS];

static PyObject *decoded_value(int kind, uint64_t v, int *unsupported) {
    if (kind == D_BOOL) {
        if (v > 1) goto unsupported;
        return Py_NewRef(v ? Py_True : Py_False);
    }
    if ((kind == D_U32 && v > UINT32_MAX) || (kind == D_ENUM && v > INT32_MAX)) goto unsupported;
    return PyLong_FromUnsignedLongLong(v);
unsupported:
    *unsupported = 1;
    return NULL;
}

/* Make ``list`` ``size`` long, the new slots NULL (to be filled before it is used). */
static int grow_list(PyObject *list, Py_ssize_t size) {
    PyListObject *l = (PyListObject *)list;
    Py_ssize_t old = PyList_GET_SIZE(list);
    if (size > l->allocated) {
        if ((size_t)size > PY_SSIZE_T_MAX / sizeof(PyObject *)) {
            PyErr_NoMemory();
            return -1;
        }
        PyObject **items = PyMem_Realloc(l->ob_item, (size_t)size * sizeof(PyObject *));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        l->ob_item = items;
        l->allocated = size;
    }
    for (Py_ssize_t i = old; i < size; i++) l->ob_item[i] = NULL;
    Py_SET_SIZE(l, size);
    return 0;
}

/* The list under ``name`` in ``out``, made empty where missing (borrowed). */
static PyObject *list_at(PyObject *out, PyObject *name) {
    PyObject *list = PyDict_GetItemWithError(out, name);
    if (list != NULL || PyErr_Occurred()) return list;
    list = PyList_New(0);
    if (list == NULL || PyDict_SetItem(out, name, list) < 0) {
        Py_XDECREF(list);
        return NULL;
    }
    Py_DECREF(list);
    return list;
}

/* The run of a repeated number at *p (after its tag): packed (wire type 2: *stop is
 * its end, *count its values, the bytes without the continuation bit: a malformed run
 * is refused as it is read) or one value (wire type 0: *stop NULL, *count 1). -1 where
 * the length is cut short or the wire type is neither. */
static int number_run(const uint8_t **p, const uint8_t *end, unsigned wire_type,
                      const uint8_t **stop, Py_ssize_t *count) {
    *stop = NULL;
    *count = 1;
    if (wire_type == 0) return 0;
    uint64_t n;
    if (wire_type != 2 || get_varint(p, end, &n) < 0 || n > (uint64_t)(end - *p)) return -1;
    *stop = *p + n;
    *count = (Py_ssize_t)(n - high_bytes(*p, (size_t)n));
    return 0;
}

/* One run of a repeated number (packed, wire type 2, or one value, wire type 0) at *p,
 * appended to the typed column under ``name`` in ``out`` (an array.array of
 * ``typecode``, made where missing): the values are read into the array's items, with
 * no Python int per value. *unsupported where the run is malformed or a value does not
 * fit its field's kind or the typecode (upb then reads the message, into lists). */
/* The varints from p to stop into the items, as ``T``s (values above max: bad). */
#define DECODE_RUN(T)                                                       \
    do {                                                                    \
        T *to = (T *)items.data;                                            \
        while (p < stop) {                                                  \
            uint64_t v;                                                     \
            if (*p < 0x80)                                                  \
                v = *p++;                                                   \
            else if (get_varint(&p, stop, &v) < 0 || v > max)               \
                goto bad_items;                                             \
            to[i++] = (T)v;                                                 \
        }                                                                   \
    } while (0)

static int decode_typed_run(const uint8_t **pp, const uint8_t *end, unsigned wire_type, int kind,
                            PyObject *typecode, PyObject *out, PyObject *name, int *unsupported) {
    const char *code = PyUnicode_AsUTF8(typecode);
    if (code == NULL) return -1;
    int size = typecode_size(code);
    if (size == 0 || kind == D_BOOL) {
        PyErr_SetString(PyExc_ValueError, "decode: a typed field wants B, H, I or Q");
        return -1;
    }
    const uint8_t *p = *pp, *stop;
    Py_ssize_t count;
    if (number_run(&p, end, wire_type, &stop, &count) < 0) goto bad;
    const uint8_t *limit = stop ? stop : end;
    uint64_t max = size == 8 ? UINT64_MAX : ((uint64_t)1 << (8 * size)) - 1;
    if (kind == D_U32 && max > UINT32_MAX) max = UINT32_MAX;
    if (kind == D_ENUM && max > INT32_MAX) max = INT32_MAX;
    /* The values are written into a buffer that the new column takes over as its
     * items (array_of); a later run of the field (which no writer of ours makes) is
     * appended to the column. */
    buf_t items = {0};
    if (buf_reserve(&items, (size_t)(count ? count : 1) * (size_t)size) < 0) return -1;
    Py_ssize_t i = 0;
    if (stop != NULL && count == stop - p) {
        /* Every value one byte below 0x80 (which every typecode holds): copied, or
         * widened, straight into the items. */
        switch (size) {
        case 1: memcpy(items.data, p, (size_t)count); break;
        case 2: for (; i < count; i++) ((uint16_t *)items.data)[i] = p[i]; break;
        case 4: for (; i < count; i++) ((uint32_t *)items.data)[i] = p[i]; break;
        default: for (; i < count; i++) ((uint64_t *)items.data)[i] = p[i]; break;
        }
        i = count;
        p = stop;
    } else if (stop != NULL) {
        /* A packed run: each varint read ends at one of the run's count bytes below
         * 0x80, so no more than count values are read; one-byte values fit any
         * typecode. */
        switch (size) {
        case 1: DECODE_RUN(uint8_t); break;
        case 2: DECODE_RUN(uint16_t); break;
        case 4: DECODE_RUN(uint32_t); break;
        default: DECODE_RUN(uint64_t); break;
        }
    }
    for (int first = 1; stop ? p < stop : first; first = 0) {
        uint64_t v;
        if (p < limit && *p < 0x80) /* one byte: most values of a packed column */
            v = *p++;
        else if (get_varint(&p, limit, &v) < 0)
            goto bad_items;
        if (i >= count || v > max) goto bad_items;
        put_unsigned(items.data + (size_t)i * (size_t)size, size, v);
        i++;
    }
    if (i != count) goto bad_items;
    items.len = (size_t)count * (size_t)size;
    PyObject *column = PyDict_GetItemWithError(out, name);
    int failed = 1;
    if (column != NULL) {
        PyObject *more = PyMemoryView_FromMemory(items.data, (Py_ssize_t)items.len, PyBUF_READ);
        PyObject *done = more == NULL ? NULL : PyObject_CallMethod(column, "frombytes", "O", more);
        Py_XDECREF(more);
        failed = done == NULL;
        Py_XDECREF(done);
    } else if (!PyErr_Occurred()) {
        column = array_of(code, size, &items);
        failed = column == NULL || PyDict_SetItem(out, name, column) < 0;
        Py_XDECREF(column);
    }
    buf_free(&items);
    *pp = p;
    return failed ? -1 : 0;
bad_items:
    buf_free(&items);
bad:
    *unsupported = 1;
    return 0;
}

static int decode_into(const uint8_t *p, const uint8_t *end, PyObject *spec, PyObject *out,
                       int *unsupported) {
    while (p < end && !*unsupported) {
        uint64_t tag, v;
        if (get_varint(&p, end, &tag) < 0 || tag >> 3 == 0 || tag >> 3 > 0x1fffffff) goto bad;
        unsigned wire_type = (unsigned)(tag & 7);
        PyObject *number = PyLong_FromUnsignedLongLong(tag >> 3);
        if (number == NULL) return -1;
        PyObject *field = PyDict_GetItemWithError(spec, number); /* (name, kind, sub) */
        Py_DECREF(number);
        if (field == NULL) {
            if (PyErr_Occurred()) return -1;
            /* A field this version does not read: skipped, as upb keeps it aside. */
            if (wire_type == 0) {
                if (get_varint(&p, end, &v) < 0) goto bad;
            } else if (wire_type == 1 || wire_type == 5) {
                size_t n = wire_type == 1 ? 8 : 4;
                if ((size_t)(end - p) < n) goto bad;
                p += n;
            } else if (wire_type == 2) {
                if (get_varint(&p, end, &v) < 0 || v > (uint64_t)(end - p)) goto bad;
                p += v;
            } else {
                goto bad; /* groups: left to upb */
            }
            continue;
        }
        PyObject *name = PyTuple_GET_ITEM(field, 0);
        int kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(field, 1));
        if (kind < D_U64 || kind >= D_UNREAD) goto bad;
        if (kind == D_SCALAR) {
            if (wire_type != 0 || get_varint(&p, end, &v) < 0) goto bad;
            PyObject *value = PyLong_FromUnsignedLongLong(v);
            if (value == NULL || PyDict_SetItem(out, name, value) < 0) {
                Py_XDECREF(value);
                return -1;
            }
            Py_DECREF(value);
            continue;
        }
        if (kind == D_MESSAGE || kind == D_STRING) {
            uint64_t n;
            if (wire_type != 2 || get_varint(&p, end, &n) < 0 || n > (uint64_t)(end - p)) goto bad;
            if (kind == D_MESSAGE) {
                PyObject *sub = PyDict_GetItemWithError(out, name);
                if (sub == NULL) {
                    if (PyErr_Occurred()) return -1;
                    sub = PyDict_New();
                    if (sub == NULL || PyDict_SetItem(out, name, sub) < 0) {
                        Py_XDECREF(sub);
                        return -1;
                    }
                    Py_DECREF(sub);
                }
                if (decode_into(p, p + n, PyTuple_GET_ITEM(field, 2), sub, unsupported) < 0)
                    return -1;
            } else {
                PyObject *list = list_at(out, name);
                if (list == NULL) return -1;
                PyObject *text = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, NULL);
                if (text == NULL) { /* not UTF-8: upb refuses it, and says so */
                    PyErr_Clear();
                    goto bad;
                }
                if (append_new(list, text) < 0) return -1;
            }
            p += n;
            continue;
        }
        /* A repeated number: packed (wire type 2) or one value (wire type 0). */
        PyObject *typecode = PyTuple_GET_ITEM(field, 2);
        if (PyUnicode_Check(typecode)) {
            if (decode_typed_run(&p, end, wire_type, kind, typecode, out, name, unsupported) < 0)
                return -1;
            continue;
        }
        PyObject *list = list_at(out, name);
        if (list == NULL) return -1;
        const uint8_t *stop;
        Py_ssize_t count, at = PyList_GET_SIZE(list);
        if (number_run(&p, end, wire_type, &stop, &count) < 0) goto bad;
        const uint8_t *limit = stop ? stop : end;
        /* The list grows once by the run's count of values. */
        if (count && grow_list(list, at + count) < 0) return -1;
        PyObject *last = NULL; /* borrowed from the list: repeated values share an int */
        uint64_t last_v = 0;
        Py_ssize_t i = at;
        for (int first = 1; stop ? p < stop : first; first = 0) {
            if (p < limit && *p < 0x80) /* one byte: most values of a packed column */
                v = *p++;
            else if (get_varint(&p, limit, &v) < 0)
                goto bad_run;
            if (i >= at + count) goto bad_run;
            PyObject *value;
            if (last != NULL && v == last_v) {
                value = Py_NewRef(last);
            } else if (v < SMALL_INTS && kind != D_BOOL) { /* in range of every int kind */
                value = Py_NewRef(small_ints[v]);
            } else {
                value = decoded_value(kind, v, unsupported);
                if (value == NULL) {
                    if (PyList_SetSlice(list, i, at + count, NULL) < 0) return -1;
                    return *unsupported ? 0 : -1;
                }
            }
            PyList_SET_ITEM(list, i++, value);
            last = value;
            last_v = v;
        }
        if (i != at + count) goto bad_run;
        continue;
    bad_run:
        if (PyList_SetSlice(list, i, at + count, NULL) < 0) return -1;
        goto bad;
    }
    return 0;
bad:
    *unsupported = 1;
    return 0;
}

/* decode(data: bytes, spec: {number: (name, kind, sub_spec | None)}) -> dict | None
 * The fields of one serialized message that the spec names, by name: repeated ones as
 * lists, or as typed columns (array.array) where the field's sub_spec is a typecode
 * ('B', 'H', 'I' or 'Q'), scalars as ints, messages as dicts of their own (present when the field was
 * there, even empty). None where the bytes are malformed or hold anything whose
 * reading is left to upb (a value out of its field's range, text that is not UTF-8, a
 * field of a kind the spec does not give): the caller then parses with upb. */
static PyObject *decode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer data;
    PyObject *spec;
    if (!PyArg_ParseTuple(args, "y*O!", &data, &PyDict_Type, &spec)) return NULL;
    int unsupported = 0;
    PyObject *out = PyDict_New();
    if (out != NULL) {
        const uint8_t *p = data.buf;
        if (decode_into(p, p + data.len, spec, out, &unsupported) < 0) Py_CLEAR(out);
    }
    PyBuffer_Release(&data);
    if (out != NULL && unsupported) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
}

/* -- checking a region table (the server's validation) ---------------------------------
 * Loops only, each answering whether a table's columns plainly pass the checks of
 * vmatlas/validate.py, with the bounds, value sets and ranges it hands in. Any answer
 * but yes (a fault, or a value these loops do not read, such as an int subclass, whose
 * comparisons may be its own) sends the table through validate.py's own checks, which
 * decide it and name the fault: both paths refuse the same tables with the same
 * message, and the messages are written once. */

/* An exact int or a bool, as a C long. -1 for anything else or out of range. */
static int plain_long(PyObject *v, long *out) {
    if (v == Py_True || v == Py_False) {
        *out = v == Py_True;
        return 0;
    }
    if (!PyLong_CheckExact(v)) return -1;
    int overflow;
    *out = PyLong_AsLongAndOverflow(v, &overflow);
    return overflow ? -1 : 0;
}

/* A non-negative bound: its value, or *unbounded where it is 2**64 or more. */
static int bound_of(PyObject *obj, uint64_t *bound, int *unbounded) {
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL) return -1;
    int negative = PyObject_RichCompareBool(obj, zero, Py_LT);
    Py_DECREF(zero);
    if (negative != 0) {
        if (negative > 0) PyErr_SetString(PyExc_ValueError, "a bound must not be negative");
        return -1;
    }
    *unbounded = 0;
    *bound = PyLong_AsUnsignedLongLong(obj);
    if (*bound == (uint64_t)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) return -1;
        PyErr_Clear();
        *unbounded = 1;
    }
    return 0;
}

/* within(column, bound: int) -> bool: every value (of a list of ints or a typed
 * column) an int in [0, bound). */
static PyObject *within(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *obj, *bound_obj;
    if (!PyArg_ParseTuple(args, "OO!", &obj, &PyLong_Type, &bound_obj)) return NULL;
    uint64_t bound;
    int unbounded;
    if (bound_of(bound_obj, &bound, &unbounded) < 0) return NULL;
    column_t c;
    if (!column_open(&c, obj)) Py_RETURN_FALSE;
    PyObject *result = Py_True;
    /* A typed column whose every possible value is below the bound passes unread. */
    uint64_t item_max = c.size == 8 ? UINT64_MAX : ((uint64_t)1 << (8 * c.size)) - 1;
    if (c.list == NULL && (unbounded || item_max < bound)) goto done;
    for (Py_ssize_t i = 0; i < c.n; i++) {
        uint64_t v;
        if (col_u64(&c, i, &v) < 0 || (!unbounded && v >= bound)) {
            result = Py_False;
            break;
        }
    }
done:
    column_close(&c);
    return Py_NewRef(result);
}

/* members_of(column, allowed: int) -> bool: every value (of a list of ints or bools,
 * or of a typed column) an int v in [0, 64) whose bit 1 << v is set in ``allowed``. */
static PyObject *members_of(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *obj;
    unsigned long long allowed;
    if (!PyArg_ParseTuple(args, "OK", &obj, &allowed)) return NULL;
    column_t c;
    if (!column_open(&c, obj)) Py_RETURN_FALSE;
    PyObject *result = Py_True;
    for (Py_ssize_t i = 0; i < c.n; i++) {
        long v;
        int got;
        if (c.list != NULL) {
            got = plain_long(PyList_GET_ITEM(c.list, i), &v);
        } else {
            uint64_t u = column_item(&c, i);
            v = u > 63 ? 64 : (long)u;
            got = 0;
        }
        if (got < 0 || v < 0 || v > 63 || !(allowed >> v & 1)) {
            result = Py_False;
            break;
        }
    }
    column_close(&c);
    return Py_NewRef(result);
}

/* texts_within(column: list, max_chars: int, max_total_chars: int) -> bool: every
 * value a str (exactly) of at most max_chars characters without a NUL, the distinct
 * ones at most max_total_chars together. Values are told apart by identity (a table's
 * paths are a few objects shared by many regions): a value met again under another
 * identity counts again, which only makes the total stricter. */
#define SEEN_TEXTS 4096

static PyObject *texts_within(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *column;
    Py_ssize_t max_chars, max_total;
    if (!PyArg_ParseTuple(args, "O!nn", &PyList_Type, &column, &max_chars, &max_total))
        return NULL;
    PyObject **seen = PyMem_Calloc(SEEN_TEXTS, sizeof(PyObject *));
    if (seen == NULL) return PyErr_NoMemory();
    PyObject *result = Py_True;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(column); i++) {
        PyObject *v = PyList_GET_ITEM(column, i);
        size_t slot = ((uintptr_t)v >> 4) & (SEEN_TEXTS - 1);
        if (seen[slot] == v) continue;
        if (!PyUnicode_CheckExact(v)) {
            result = Py_False;
            break;
        }
        Py_ssize_t n = PyUnicode_GET_LENGTH(v);
        Py_ssize_t nul = n ? PyUnicode_FindChar(v, 0, 0, n, 1) : -1;
        if (nul == -2) {
            result = NULL;
            break;
        }
        total += n;
        if (n > max_chars || nul != -1 || total > max_total) {
            result = Py_False;
            break;
        }
        seen[slot] = v;
    }
    PyMem_Free(seen);
    return Py_XNewRef(result);
}

/* layout(starts, ends, states, kinds, low, high, page_mask, free_state, free_allowed,
 *        gate_kind, gate_max_bytes) -> int | None
 * The number of regions whose state is not free_state, when every region is non-empty
 * (start < end), starts at or after the end of the one before, is free only where
 * free_allowed, has start and end on page boundaries (no bit of page_mask set) and
 * lies in [low, high] but for a gate page: a region of kind gate_kind (none when it is
 * negative), starting at or above high, of at most gate_max_bytes. None otherwise, or where a column holds a
 * value of another kind (the columns are the same length). */
static PyObject *layout(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *objs[4], *low_obj, *high_obj;
    unsigned long long page_mask, gate_max;
    long free_state, gate_kind;
    int free_allowed;
    if (!PyArg_ParseTuple(args, "OOOOO!O!KlplK", &objs[0], &objs[1], &objs[2], &objs[3],
                          &PyLong_Type, &low_obj, &PyLong_Type, &high_obj, &page_mask,
                          &free_state, &free_allowed, &gate_kind, &gate_max))
        return NULL;
    uint64_t low, high;
    int low_unbounded, unbounded;
    if (bound_of(low_obj, &low, &low_unbounded) < 0 || bound_of(high_obj, &high, &unbounded) < 0)
        return NULL;
    column_t cols[4];
    Py_ssize_t n;
    if (low_unbounded || !columns_open(cols, objs, 4, &n)) Py_RETURN_NONE;
    PyObject *result = Py_None;
    uint64_t previous_end = 0;
    Py_ssize_t mapped = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t s, e;
        long state, kind;
        if (col_u64(&cols[0], i, &s) < 0 || col_u64(&cols[1], i, &e) < 0) goto done;
        if (cols[2].list != NULL ? plain_long(PyList_GET_ITEM(cols[2].list, i), &state) < 0
                                 : col_small(&cols[2], i, &state) < 0)
            goto done;
        if (cols[3].list != NULL ? plain_long(PyList_GET_ITEM(cols[3].list, i), &kind) < 0
                                 : col_small(&cols[3], i, &kind) < 0)
            goto done;
        if (s >= e || s < previous_end || ((s | e) & page_mask)) goto done;
        if (state != free_state)
            mapped++;
        else if (!free_allowed)
            goto done;
        if (s < low || (!unbounded && e > high)) {
            int gate = gate_kind >= 0 && kind == gate_kind && !unbounded && s >= high && e - s <= gate_max;
            if (!gate) goto done;
        }
        previous_end = e;
    }
    result = NULL;
done:
    columns_close(cols, 4);
    if (result == NULL) return PyLong_FromSsize_t(mapped);
    return Py_NewRef(result);
}

/* -- diffing two region tables -------------------------------------------------------- */

#define MAX_DIFF_COLUMNS 16

/* An integer as its sign and its 64 two's-complement bits: two are equal when both
 * are; negative ones order before the others, and within one sign the bits order. */
typedef struct {
    uint64_t bits;
    int negative;
} int_value_t;

/* 0, or 1 where the object is not an int of 64 bits (signed or not). */
static int object_value(PyObject *o, int_value_t *v) {
    if (!PyLong_Check(o)) return 1;
#ifdef SMALL_LONG_FAST
    if (PyLong_CheckExact(o) && compact_u64(o, &v->bits)) {
        v->negative = 0;
        return 0;
    }
#endif
    int overflow;
    long long s = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (s == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    if (overflow == 0) {
        v->negative = s < 0;
        v->bits = (uint64_t)s;
        return 0;
    }
    if (overflow < 0) return 1;
    unsigned long long u = PyLong_AsUnsignedLongLong(o);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    v->negative = 0;
    v->bits = u;
    return 0;
}

static int value_at(const column_t *c, Py_ssize_t i, int_value_t *v) {
    if (c->list != NULL) return object_value(PyList_GET_ITEM(c->list, i), v);
    v->bits = column_item(c, i);
    v->negative = 0;
    return 0;
}

/* Whether a[i] == b[j]: 1 or 0; -1 with an exception set; 2 where this loop cannot
 * tell (a list's value that is not a 64-bit int beside a buffer's). */
static int cells_equal(const column_t *a, Py_ssize_t i, const column_t *b, Py_ssize_t j) {
    if (a->list != NULL && b->list != NULL) {
        PyObject *x = PyList_GET_ITEM(a->list, i), *y = PyList_GET_ITEM(b->list, j);
        if (x == y) return 1;
#ifdef SMALL_LONG_FAST
        uint64_t u, w;
        if (PyLong_CheckExact(x) && PyLong_CheckExact(y) && compact_u64(x, &u) &&
            compact_u64(y, &w))
            return u == w;
#endif
        return PyObject_RichCompareBool(x, y, Py_EQ);
    }
    if (a->list == NULL && b->list == NULL) return column_item(a, i) == column_item(b, j);
    int_value_t x, y;
    if (value_at(a, i, &x) || value_at(b, j, &y)) return 2;
    return x.negative == y.negative && x.bits == y.bits;
}

/* differing(a_columns, b_columns) -> (a_only, b_only) | None
 * The indices of the rows of two tables, each sorted by its first column (the start),
 * that have no equal row on the other side: a merge-walk on the first column in which
 * two rows of one start that agree in every column are passed over together, as
 * diff.changed_rows walks. Each column is a list or a buffer of unsigned integers
 * (column_t); None where one is neither, where a table's columns differ in length, or
 * where a start, or a list's value compared with a buffer's, is not a 64-bit int. */
static PyObject *differing(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *a_obj, *b_obj;
    if (!PyArg_ParseTuple(args, "O!O!", &PyTuple_Type, &a_obj, &PyTuple_Type, &b_obj)) return NULL;
    Py_ssize_t k = PyTuple_GET_SIZE(a_obj);
    if (k != PyTuple_GET_SIZE(b_obj) || k < 1 || k > MAX_DIFF_COLUMNS) {
        PyErr_SetString(PyExc_TypeError, "differing: two tuples of 1 to 16 columns each");
        return NULL;
    }
    column_t a[MAX_DIFF_COLUMNS], b[MAX_DIFF_COLUMNS];
    Py_ssize_t opened = 0;
    PyObject *a_only = NULL, *b_only = NULL, *out = NULL;
    for (; opened < k; opened++) {
        if (!column_open(&a[opened], PyTuple_GET_ITEM(a_obj, opened))) goto none;
        if (!column_open(&b[opened], PyTuple_GET_ITEM(b_obj, opened))) {
            column_close(&a[opened]);
            goto none;
        }
    }
    Py_ssize_t na = a[0].n, nb = b[0].n;
    for (Py_ssize_t c = 1; c < k; c++)
        if (a[c].n != na || b[c].n != nb) goto none;
    a_only = PyList_New(0);
    b_only = PyList_New(0);
    if (a_only == NULL || b_only == NULL) goto done;
    Py_ssize_t i = 0, j = 0;
    while (i < na && j < nb) {
        int_value_t sa, sb;
        if (value_at(&a[0], i, &sa) || value_at(&b[0], j, &sb)) goto none;
        if (sa.negative == sb.negative && sa.bits == sb.bits) {
            int same = 1;
            for (Py_ssize_t c = 1; c < k && same; c++) {
                int r = cells_equal(&a[c], i, &b[c], j);
                if (r < 0) goto done;
                if (r == 2) goto none;
                same = r;
            }
            if (!same && (append_new(a_only, PyLong_FromSsize_t(i)) < 0 ||
                          append_new(b_only, PyLong_FromSsize_t(j)) < 0))
                goto done;
            i++;
            j++;
        } else if (sa.negative != sb.negative ? sa.negative : sa.bits < sb.bits) {
            if (append_new(a_only, PyLong_FromSsize_t(i++)) < 0) goto done;
        } else {
            if (append_new(b_only, PyLong_FromSsize_t(j++)) < 0) goto done;
        }
    }
    for (; i < na; i++)
        if (append_new(a_only, PyLong_FromSsize_t(i)) < 0) goto done;
    for (; j < nb; j++)
        if (append_new(b_only, PyLong_FromSsize_t(j)) < 0) goto done;
    out = PyTuple_Pack(2, a_only, b_only);
    goto done;
none:
    out = Py_NewRef(Py_None);
done:
    for (Py_ssize_t c = 0; c < opened; c++) {
        column_close(&a[c]);
        column_close(&b[c]);
    }
    Py_XDECREF(a_only);
    Py_XDECREF(b_only);
    return out;
}

static PyMethodDef methods[] = {
    {"scan_maps", scan_maps, METH_VARARGS, "Scan maps text into columns."},
#ifndef _WIN32
    {"scan_maps_fd", scan_maps_fd, METH_VARARGS, "Scan a maps file into columns as it is read."},
#endif
    {"scan_smaps", scan_smaps, METH_VARARGS, "Scan regular smaps text into columns."},
#ifndef _WIN32
    {"scan_smaps_fd", scan_smaps_fd, METH_VARARGS, "Scan a regular smaps file into columns."},
#endif
    {"gather", gather, METH_VARARGS, "values[k] for each k of an index."},
    {"spread", spread, METH_VARARGS, "A typed column of values[k] for each k of an index."},
    {"take", take, METH_VARARGS, "values[k] for each k of a list of indices."},
    {"nonzero", nonzero, METH_O, "Whether a typed column holds a value other than 0."},
    {"bounds", bounds, METH_VARARGS, "Region boundaries from page deltas and sizes."},
    {"tally", tally, METH_VARARGS, "Counts, bytes and single pages per distinct key."},
    {"followed_by", followed_by, METH_VARARGS, "Regions matching a (region, next) pattern."},
    {"free_gaps", free_gaps, METH_VARARGS, "The unmapped gaps of a range."},
    {"walk", walk, METH_VARARGS, "tally, free_gaps totals and the guards' neighbours at once."},
    {"encode", encode, METH_O, "Protobuf wire bytes from a field spec."},
    {"decode", decode, METH_VARARGS, "The fields of protobuf wire bytes, by a field spec."},
    {"distinct", distinct, METH_VARARGS, "Index rows of columns by distinct value."},
    {"within", within, METH_VARARGS, "Whether every value is an int below a bound."},
    {"members_of", members_of, METH_VARARGS, "Whether every value is in a set of small ints."},
    {"texts_within", texts_within, METH_VARARGS, "Whether every value is a bounded text."},
    {"layout", layout, METH_VARARGS, "Regions not free, where the layout plainly passes."},
    {"differing", differing, METH_VARARGS, "Rows of two sorted tables with no equal row."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "vmatlas._native", "The optional C loops of vmatlas's capture path.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    init_hex();
    if (array_type == NULL) {
        PyObject *array = PyImport_ImportModule("array");
        if (array == NULL) return NULL;
        array_type = PyObject_GetAttrString(array, "array");
        Py_DECREF(array);
        if (array_type == NULL) return NULL;
        check_array_layout();
    }
    for (int i = 0; i < SMALL_INTS; i++)
        if (small_ints[i] == NULL && (small_ints[i] = PyLong_FromLong(i)) == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
#ifdef VMATLAS_NATIVE_SOURCE_CRC32
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_CRC32", VMATLAS_NATIVE_SOURCE_CRC32) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
