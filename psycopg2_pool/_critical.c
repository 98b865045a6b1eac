/* The fast paths' critical sections, each one C call (see psycopg2_pool/critical.py).
 *
 * A critical section written in Python pays for ``with lock:`` (~60 ns more than a bare
 * acquire and release: two bound methods made and called) and runs a dozen bytecodes, after
 * any call of which a signal handler may raise. Here each section is one call: no signal's
 * exception is delivered inside it, and its lock is taken and released in C.
 *
 * Lock: a mutex with threading.Lock's interface (acquire(blocking=True), release(), locked(),
 *   the context manager), whose blocking acquire is interruptible by a signal handler as
 *   threading.Lock's is: a handler that raises makes the acquire raise, the lock not taken.
 * FastPaths(lock, idle, records, waiters): a pool's sections, over its lock, idle deque,
 *   records and waiters, with the counters ``requests`` and ``returns`` and the flag
 *   ``slow_return`` (C fields, written under the lock).
 *   take(now): pops the most recently returned idle connection, marks its record OUT (lent
 *     to records, since=now), counts the request; None when none is idle.
 *   keep(conn, rec, now): when nothing but keeping is to be done (not slow_return, rec.lent
 *     is records, no waiter, rec.doomed None): marks the record IDLE (returned_at=now), appends the
 *     connection to the idle deque, counts the return, True; else changes nothing: False.
 *
 * While the lock is held: the GIL is never released, no Python code runs, nothing the
 * garbage collector tracks is allocated (so a collection, and a finaliser's code, cannot
 * start inside), and references are dropped only after the release. A Record's slots are
 * written directly at the offsets its member descriptors give (setup()), as those
 * descriptors would. Public (not limited) C API of Python 3.11+; when this module cannot be
 * built, critical.py's Python sections, the reference, are used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pythread.h>
#include <structmember.h>

/* -- Lock ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    char locked;
} LockObject;

static PyTypeObject LockType;

/* Take the lock, waiting with the GIL released; -1 with an exception set when a signal
 * handler raised while waiting (the lock is then not taken). */
static int
lock_take(LockObject *self)
{
    PyLockStatus r = PyThread_acquire_lock_timed(self->lock, 0, 0);
    while (r != PY_LOCK_ACQUIRED) {
        Py_BEGIN_ALLOW_THREADS
        r = PyThread_acquire_lock_timed(self->lock, -1, 1);
        Py_END_ALLOW_THREADS
        if (r == PY_LOCK_INTR && Py_MakePendingCalls() < 0) {
            return -1;
        }
    }
    self->locked = 1;
    return 0;
}

static void
lock_give(LockObject *self)
{
    self->locked = 0;
    PyThread_release_lock(self->lock);
}

static PyObject *
lock_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) || (kwargs != NULL && PyDict_GET_SIZE(kwargs))) {
        PyErr_SetString(PyExc_TypeError, "Lock() takes no arguments");
        return NULL;
    }
    LockObject *self = (LockObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lock = PyThread_allocate_lock();
    self->locked = 0;
    if (self->lock == NULL) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_MemoryError, "cannot allocate a lock");
        return NULL;
    }
    return (PyObject *)self;
}

static void
lock_dealloc(LockObject *self)
{
    if (self->lock != NULL) {
        if (self->locked) {
            PyThread_release_lock(self->lock);
        }
        PyThread_free_lock(self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
lock_acquire(LockObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"blocking", NULL};
    int blocking = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|p:acquire", names, &blocking)) {
        return NULL;
    }
    if (!blocking) {
        if (PyThread_acquire_lock_timed(self->lock, 0, 0) != PY_LOCK_ACQUIRED) {
            Py_RETURN_FALSE;
        }
        self->locked = 1;
        Py_RETURN_TRUE;
    }
    if (lock_take(self) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
lock_enter(LockObject *self, PyObject *Py_UNUSED(ignored))
{
    if (lock_take(self) < 0) {
        return NULL;
    }
    Py_RETURN_TRUE;
}

static PyObject *
lock_release(LockObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!self->locked) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    lock_give(self);
    Py_RETURN_NONE;
}

static PyObject *
lock_exit(LockObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    return lock_release(self, NULL);
}

static PyObject *
lock_locked(LockObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->locked);
}

static PyObject *
lock_repr(LockObject *self)
{
    return PyUnicode_FromFormat("<%s %s object at %p>", self->locked ? "locked" : "unlocked",
                                Py_TYPE(self)->tp_name, self);
}

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True)\n--\n\nTake the lock; without blocking, False if it is held."},
    {"release", (PyCFunction)lock_release, METH_NOARGS, "Release the lock."},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS, "Whether the lock is held."},
    {"__enter__", (PyCFunction)lock_enter, METH_NOARGS, "Take the lock (blocking)."},
    {"__exit__", (PyCFunction)(void (*)(void))lock_exit, METH_FASTCALL, "Release the lock."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "psycopg2_pool._critical.Lock",
    .tp_basicsize = sizeof(LockObject),
    .tp_dealloc = (destructor)lock_dealloc,
    .tp_repr = (reprfunc)lock_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mutex with threading.Lock's interface that the C critical sections take "
              "directly.",
    .tp_methods = lock_methods,
    .tp_new = lock_new,
};

/* -- FastPaths ---------------------------------------------------------------------- */

static PyObject *OUT, *IDLE;    /* the record states (psycopg2_pool.connection), from setup() */
static PyTypeObject *RecordType;  /* psycopg2_pool.connection.Record, from setup() */
/* Offsets of Record's slots, from its member descriptors: written directly, as its own
 * descriptors would (an exact Record only; anything else goes through setattr). */
static Py_ssize_t off_state, off_lent, off_since, off_returned_at, off_doomed;
static PyObject *s_pool_rec;

typedef struct {
    PyObject_HEAD
    LockObject *lock;
    PyObject *idle, *idle_pop, *idle_append;  /* the deque, and its bound pop and append */
    PyObject *records, *waiters;
    Py_ssize_t requests, returns;
    char slow_return;
} FastPathsObject;

static PyObject *
fast_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"lock", "idle", "records", "waiters", NULL};
    PyObject *lock, *idle, *records, *waiters;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOO:FastPaths", names, &lock, &idle,
                                     &records, &waiters)) {
        return NULL;
    }
    if (!Py_IS_TYPE(lock, &LockType)) {
        PyErr_Format(PyExc_TypeError, "lock must be a psycopg2_pool._critical.Lock, not %.200s",
                     Py_TYPE(lock)->tp_name);
        return NULL;
    }
    if (RecordType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "psycopg2_pool._critical.setup() was not called");
        return NULL;
    }
    FastPathsObject *self = (FastPathsObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->lock = (LockObject *)Py_NewRef(lock);
    self->idle = Py_NewRef(idle);
    self->records = Py_NewRef(records);
    self->waiters = Py_NewRef(waiters);
    self->idle_pop = PyObject_GetAttrString(idle, "pop");
    self->idle_append = self->idle_pop == NULL ? NULL : PyObject_GetAttrString(idle, "append");
    self->slow_return = 1;
    if (self->idle_append == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
fast_traverse(FastPathsObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->lock);
    Py_VISIT(self->idle);
    Py_VISIT(self->idle_pop);
    Py_VISIT(self->idle_append);
    Py_VISIT(self->records);
    Py_VISIT(self->waiters);
    return 0;
}

static int
fast_clear(FastPathsObject *self)
{
    Py_CLEAR(self->lock);
    Py_CLEAR(self->idle);
    Py_CLEAR(self->idle_pop);
    Py_CLEAR(self->idle_append);
    Py_CLEAR(self->records);
    Py_CLEAR(self->waiters);
    return 0;
}

static void
fast_dealloc(FastPathsObject *self)
{
    PyObject_GC_UnTrack(self);
    fast_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Store value in rec's slot at offset (a new reference), or through setattr for anything but
 * an exact Record; the old value goes to *old, to be dropped once the lock is released. */
static int
put(PyObject *rec, Py_ssize_t offset, const char *name, PyObject *value, PyObject **old)
{
    if (Py_IS_TYPE(rec, RecordType)) {
        PyObject **slot = (PyObject **)((char *)rec + offset);
        *old = *slot;
        *slot = Py_NewRef(value);
        return 0;
    }
    *old = NULL;
    return PyObject_SetAttrString(rec, name, value);
}

static PyObject *
fast_take(FastPathsObject *self, PyObject *now)
{
    if (lock_take(self->lock) < 0) {
        return NULL;
    }
    /* Locked: no Python code runs and nothing the garbage collector tracks is allocated
     * until the lock is released; references are dropped after that. */
    PyObject *old[3] = {NULL, NULL, NULL}, *rec = NULL, *dropped = NULL, *conn;
    Py_ssize_t n = PyObject_Length(self->idle);
    if (n <= 0) {
        conn = n == 0 ? Py_NewRef(Py_None) : NULL;
        goto done;
    }
    conn = PyObject_CallNoArgs(self->idle_pop);  /* out of the deque, then marked */
    if (conn == NULL) {
        goto done;
    }
    rec = PyObject_GetAttr(conn, s_pool_rec);
    if (rec == NULL
            || put(rec, off_state, "state", OUT, &old[0]) < 0
            || put(rec, off_lent, "lent", self->records, &old[1]) < 0
            || put(rec, off_since, "since", now, &old[2]) < 0) {
        dropped = conn;  /* an IDLE record out of the deque: given back when collected */
        conn = NULL;
        goto done;
    }
    self->requests++;
done:
    lock_give(self->lock);
    Py_XDECREF(dropped);
    Py_XDECREF(rec);
    Py_XDECREF(old[0]);
    Py_XDECREF(old[1]);
    Py_XDECREF(old[2]);
    return conn;
}

static PyObject *
fast_keep(FastPathsObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "keep() takes exactly 3 arguments (conn, rec, now)");
        return NULL;
    }
    PyObject *conn = args[0], *rec = args[1], *now = args[2];
    PyObject *old[3] = {NULL, NULL, NULL}, *result = NULL, *lent = NULL, *appended = NULL;
    if (lock_take(self->lock) < 0) {
        return NULL;
    }
    if (self->slow_return) {
        result = Py_False;
        goto done;
    }
    int doomed;
    if (Py_IS_TYPE(rec, RecordType)) {
        lent = Py_XNewRef(*(PyObject **)((char *)rec + off_lent));
        PyObject *mark = *(PyObject **)((char *)rec + off_doomed);
        doomed = mark != NULL && mark != Py_None;
    }
    else {
        if ((lent = PyObject_GetAttrString(rec, "lent")) == NULL) {
            goto done;
        }
        PyObject *mark = PyObject_GetAttrString(rec, "doomed");
        if (mark == NULL) {
            goto done;
        }
        doomed = mark != Py_None;
        Py_DECREF(mark);  /* a str or None, held by the record: nothing is freed */
    }
    if (doomed) {  /* drained or swept by a role change: the Python path closes it */
        result = Py_False;
        goto done;
    }
    Py_ssize_t queued = PyObject_Length(self->waiters);
    if (queued < 0) {
        goto done;
    }
    if (lent != self->records || queued) {  /* misuse, or a waiter to serve: the Python path */
        result = Py_False;
        goto done;
    }
    if (put(rec, off_returned_at, "returned_at", now, &old[0]) < 0
            || put(rec, off_state, "state", IDLE, &old[1]) < 0  /* marked, then in the deque */
            || put(rec, off_lent, "lent", Py_None, &old[2]) < 0) {
        goto done;
    }
    appended = PyObject_CallOneArg(self->idle_append, conn);
    if (appended != NULL) {
        self->returns++;
        result = Py_True;
    }
done:
    lock_give(self->lock);
    Py_XDECREF(appended);
    Py_XDECREF(lent);
    Py_XDECREF(old[0]);
    Py_XDECREF(old[1]);
    Py_XDECREF(old[2]);
    return Py_XNewRef(result);
}

static PyMethodDef fast_methods[] = {
    {"take", (PyCFunction)fast_take, METH_O,
     "take(now)\n--\n\nThe checkout's critical section (see psycopg2_pool.critical)."},
    {"keep", (PyCFunction)(void (*)(void))fast_keep, METH_FASTCALL,
     "keep(conn, rec, now)\n--\n\nThe return's critical section (see psycopg2_pool.critical)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef fast_members[] = {
    {"lock", T_OBJECT, offsetof(FastPathsObject, lock), READONLY, NULL},
    {"idle", T_OBJECT, offsetof(FastPathsObject, idle), READONLY, NULL},
    {"records", T_OBJECT, offsetof(FastPathsObject, records), READONLY, NULL},
    {"waiters", T_OBJECT, offsetof(FastPathsObject, waiters), READONLY, NULL},
    {"requests", T_PYSSIZET, offsetof(FastPathsObject, requests), 0,
     "Checkouts counted (written under the lock)."},
    {"returns", T_PYSSIZET, offsetof(FastPathsObject, returns), 0,
     "Returns counted (written under the lock)."},
    {"slow_return", T_BOOL, offsetof(FastPathsObject, slow_return), 0,
     "Whether every return must take the Python path (written under the lock)."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FastPathsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "psycopg2_pool._critical.FastPaths",
    .tp_basicsize = sizeof(FastPathsObject),
    .tp_dealloc = (destructor)fast_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A pool's fast paths' critical sections (see psycopg2_pool.critical).",
    .tp_traverse = (traverseproc)fast_traverse,
    .tp_clear = (inquiry)fast_clear,
    .tp_methods = fast_methods,
    .tp_members = fast_members,
    .tp_new = fast_new,
};

/* The offset of a T_OBJECT_EX slot of type, from its member descriptor. */
static int
slot_offset(PyTypeObject *type, const char *name, Py_ssize_t *offset)
{
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name);  /* borrowed */
    if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%.200s.%s is not a slot", type->tp_name, name);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX || (member->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "%.200s.%s is not a writable slot", type->tp_name, name);
        return -1;
    }
    *offset = member->offset;
    return 0;
}

static PyObject *
setup(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "setup() takes exactly 3 arguments (OUT, IDLE, Record)");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[2];
    if (slot_offset(type, "state", &off_state) < 0 || slot_offset(type, "lent", &off_lent) < 0
            || slot_offset(type, "since", &off_since) < 0
            || slot_offset(type, "returned_at", &off_returned_at) < 0
            || slot_offset(type, "doomed", &off_doomed) < 0) {
        return NULL;
    }
    Py_XSETREF(OUT, Py_NewRef(args[0]));
    Py_XSETREF(IDLE, Py_NewRef(args[1]));
    Py_XSETREF(RecordType, (PyTypeObject *)Py_NewRef(type));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"setup", (PyCFunction)(void (*)(void))setup, METH_FASTCALL,
     "setup(OUT, IDLE, Record)\n--\n\nThe record states and the record type the sections "
     "write."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "psycopg2_pool._critical",
    "The fast paths' critical sections, each one C call (see psycopg2_pool.critical).", 0,
    methods,
};

PyMODINIT_FUNC
PyInit__critical(void)
{
    s_pool_rec = PyUnicode_InternFromString("_pool_rec");
    if (s_pool_rec == NULL || PyType_Ready(&LockType) < 0 || PyType_Ready(&FastPathsType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Lock", (PyObject *)&LockType) < 0
            || PyModule_AddObjectRef(m, "FastPaths", (PyObject *)&FastPathsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
