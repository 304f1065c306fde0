/*
 * A fake libnvidia-ml.so.1 for tests: enough of the NVML C API for NVIDIA's own
 * Python binding (pynvml, from nvidia-ml-py) to run its real code paths on a
 * machine without a GPU.
 *
 * The GPUs come from the text file named by $FAKE_NVML_CONFIG, re-read on every
 * call so that a test can change memory use, utilisation, power or health by
 * rewriting it (write a temp file and rename it over, so a reader never sees half
 * a file). Format, one item per line, '#' starts a comment:
 *
 *   driver_version=550.54.15          global settings: key=value
 *   cuda_version=12040                CUDA driver version, 1000*major + 10*minor
 *   driver_loaded_at_ms=1700000000000 energy counts from here (default: first init)
 *   init_error=DRIVER_NOT_LOADED      make nvmlInit fail (name or number)
 *   gpu|uuid=GPU-...|name=NVIDIA H100 80GB HBM3|memory_total=85899345920|...
 *
 * A gpu line is '|'-separated key=value fields; GPU indices follow line order.
 * Keys: uuid, name, memory_total, memory_used, memory_reserved (bytes), util,
 * memory_util, temperature (percent, °C), power_mw, power_limit_mw, cc (e.g. 9.0),
 * ecc_uncorrected, ecc_corrected, retired_pages_pending (0/1),
 * energy_base_mj (energy at driver load), state (ok, lost: every call on the
 * device fails with GPU_IS_LOST; lost_handle: even getting its handle fails;
 * reset_required), unsupported (comma list of: memory_v2, utilization,
 * temperature, power, energy, power_limit, cc, ecc, retired_pages -> those calls
 * return NVML_ERROR_NOT_SUPPORTED). Unknown keys make nvmlInit fail, loudly.
 *
 * xids (comma list of XID numbers, e.g. 79,31) is the GPU's history of critical
 * XID errors: each event set delivers every XID listed, in order, once, from
 * nvmlEventSetWait_v2 (appending one to the list injects a new XID).
 *
 * Energy grows as power_mw x elapsed time (mW x s = mJ) and never decreases
 * within a process. Built with -DFAKE_NVML_OLD_DRIVER the library lacks the
 * symbols of calls that old drivers lack, so the binding raises
 * NVMLError_FunctionNotFound for them.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_GPUS 64
#define STR_LEN 96
#define MEMORY_V2_VERSION 0x02000028u
#define MAX_XIDS 32
#define EVENT_XID_CRITICAL 0x8ULL

enum { ST_OK, ST_LOST, ST_LOST_HANDLE, ST_RESET_REQUIRED };
enum {
    U_MEMORY_V2 = 1 << 0,
    U_UTILIZATION = 1 << 1,
    U_TEMPERATURE = 1 << 2,
    U_POWER = 1 << 3,
    U_ENERGY = 1 << 4,
    U_POWER_LIMIT = 1 << 5,
    U_CC = 1 << 6,
    U_ECC = 1 << 7,
    U_RETIRED = 1 << 8,
};

typedef struct {
    unsigned index;
    char uuid[STR_LEN];
    char name[STR_LEN];
    unsigned long long memory_total, memory_used, memory_reserved;
    unsigned util, memory_util, temperature;
    unsigned power_mw, power_limit_mw;
    int cc_major, cc_minor;
    unsigned long long ecc_uncorrected, ecc_corrected;
    unsigned retired_pages_pending;
    unsigned long long energy_base_mj;
    int state;
    unsigned unsupported;
    unsigned long long xids[MAX_XIDS];
    unsigned xid_count;
} fake_gpu;

typedef struct nvmlDevice_st {
    unsigned slot;
} *nvmlDevice_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int init_count;
static fake_gpu gpus[MAX_GPUS];
static unsigned gpu_count;
static char driver_version[STR_LEN];
static int cuda_version;
static int init_error;
static long long driver_loaded_at_ms; /* from the config; 0: first init */
static long long first_init_ms;
static struct nvmlDevice_st handles[MAX_GPUS];

#ifndef FAKE_NVML_OLD_DRIVER
/* Energy integrated inside this process: survives re-reading the config. */
static unsigned long long energy_mj[MAX_GPUS];
static unsigned long long energy_rem_nj[MAX_GPUS];
static long long energy_at_us[MAX_GPUS];
static char energy_uuid[MAX_GPUS][STR_LEN];
#endif

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static const struct {
    const char *name;
    int code;
} error_names[] = {
    {"UNINITIALIZED", NVML_ERROR_UNINITIALIZED},
    {"NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED},
    {"NO_PERMISSION", NVML_ERROR_NO_PERMISSION},
    {"DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED},
    {"LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH},
    {"UNKNOWN", NVML_ERROR_UNKNOWN},
};

static int parse_error_code(const char *value) {
    for (size_t i = 0; i < sizeof error_names / sizeof error_names[0]; i++)
        if (strcmp(value, error_names[i].name) == 0) return error_names[i].code;
    return atoi(value);
}

static unsigned parse_unsupported(const char *value) {
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {
        {"memory_v2", U_MEMORY_V2}, {"utilization", U_UTILIZATION},
        {"temperature", U_TEMPERATURE}, {"power", U_POWER},
        {"energy", U_ENERGY}, {"power_limit", U_POWER_LIMIT},
        {"cc", U_CC}, {"ecc", U_ECC}, {"retired_pages", U_RETIRED},
    };
    unsigned bits = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", value);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        size_t i;
        for (i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strcmp(tok, names[i].name) == 0) break;
        if (i == sizeof names / sizeof names[0]) return (unsigned)-1;
        bits |= names[i].bit;
    }
    return bits;
}

static void strip(char *s) {
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) s[--n] = 0;
}

static int complain(const char *path, int line, const char *what) {
    fprintf(stderr, "fake NVML: %s:%d: %s\n", path, line, what);
    return -1;
}

static int parse_gpu_field(fake_gpu *g, char *key, char *value) {
    if (!strcmp(key, "uuid")) snprintf(g->uuid, STR_LEN, "%s", value);
    else if (!strcmp(key, "name")) snprintf(g->name, STR_LEN, "%s", value);
    else if (!strcmp(key, "memory_total")) g->memory_total = strtoull(value, NULL, 10);
    else if (!strcmp(key, "memory_used")) g->memory_used = strtoull(value, NULL, 10);
    else if (!strcmp(key, "memory_reserved")) g->memory_reserved = strtoull(value, NULL, 10);
    else if (!strcmp(key, "util")) g->util = (unsigned)strtoul(value, NULL, 10);
    else if (!strcmp(key, "memory_util")) g->memory_util = (unsigned)strtoul(value, NULL, 10);
    else if (!strcmp(key, "temperature")) g->temperature = (unsigned)strtoul(value, NULL, 10);
    else if (!strcmp(key, "power_mw")) g->power_mw = (unsigned)strtoul(value, NULL, 10);
    else if (!strcmp(key, "power_limit_mw")) g->power_limit_mw = (unsigned)strtoul(value, NULL, 10);
    else if (!strcmp(key, "cc")) {
        if (sscanf(value, "%d.%d", &g->cc_major, &g->cc_minor) != 2) return -1;
    } else if (!strcmp(key, "ecc_uncorrected")) g->ecc_uncorrected = strtoull(value, NULL, 10);
    else if (!strcmp(key, "ecc_corrected")) g->ecc_corrected = strtoull(value, NULL, 10);
    else if (!strcmp(key, "retired_pages_pending")) g->retired_pages_pending = (unsigned)atoi(value);
    else if (!strcmp(key, "energy_base_mj")) g->energy_base_mj = strtoull(value, NULL, 10);
    else if (!strcmp(key, "state")) {
        if (!strcmp(value, "ok")) g->state = ST_OK;
        else if (!strcmp(value, "lost")) g->state = ST_LOST;
        else if (!strcmp(value, "lost_handle")) g->state = ST_LOST_HANDLE;
        else if (!strcmp(value, "reset_required")) g->state = ST_RESET_REQUIRED;
        else return -1;
    } else if (!strcmp(key, "xids")) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", value);
        g->xid_count = 0;
        for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            if (g->xid_count == MAX_XIDS) return -1;
            g->xids[g->xid_count++] = strtoull(tok, NULL, 10);
        }
    } else if (!strcmp(key, "unsupported")) {
        g->unsupported = parse_unsupported(value);
        if (g->unsupported == (unsigned)-1) return -1;
    } else return -1;
    return 0;
}

/* Re-reads $FAKE_NVML_CONFIG. Returns 0, or -1 after saying why on stderr. */
static int load_config(void) {
    const char *path = getenv("FAKE_NVML_CONFIG");
    if (!path || !*path) {
        fprintf(stderr, "fake NVML: FAKE_NVML_CONFIG is not set\n");
        return -1;
    }
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "fake NVML: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    static fake_gpu parsed[MAX_GPUS];
    unsigned count = 0;
    char version[STR_LEN] = "550.54.15";
    int cuda = 12040, error = 0;
    long long loaded_at = 0;
    char line[1024];
    int lineno = 0, bad = 0;
    while (!bad && fgets(line, sizeof line, f)) {
        lineno++;
        strip(line);
        if (!line[0] || line[0] == '#') continue;
        if (!strncmp(line, "gpu|", 4) || !strcmp(line, "gpu")) {
            if (count == MAX_GPUS) {
                bad = complain(path, lineno, "too many GPUs");
                break;
            }
            fake_gpu *g = &parsed[count];
            memset(g, 0, sizeof *g);
            g->index = count;
            snprintf(g->uuid, STR_LEN, "GPU-00000000-0000-0000-0000-%012u", count);
            snprintf(g->name, STR_LEN, "NVIDIA H100 80GB HBM3");
            g->memory_total = 85899345920ULL;
            g->temperature = 40;
            g->power_mw = 100000;
            g->power_limit_mw = 700000;
            g->cc_major = 9;
            char *save = NULL;
            strtok_r(line, "|", &save);
            for (char *field = strtok_r(NULL, "|", &save); field; field = strtok_r(NULL, "|", &save)) {
                char *eq = strchr(field, '=');
                if (!eq) {
                    bad = complain(path, lineno, "field without '='");
                    break;
                }
                *eq = 0;
                if (parse_gpu_field(g, field, eq + 1)) {
                    bad = complain(path, lineno, "unknown gpu key or bad value");
                    break;
                }
            }
            count++;
            continue;
        }
        char *eq = strchr(line, '=');
        if (!eq) {
            bad = complain(path, lineno, "expected key=value or a gpu|... line");
            break;
        }
        *eq = 0;
        const char *value = eq + 1;
        if (!strcmp(line, "driver_version")) snprintf(version, STR_LEN, "%s", value);
        else if (!strcmp(line, "cuda_version")) cuda = atoi(value);
        else if (!strcmp(line, "init_error")) error = parse_error_code(value);
        else if (!strcmp(line, "driver_loaded_at_ms")) loaded_at = atoll(value);
        else bad = complain(path, lineno, "unknown key");
    }
    fclose(f);
    if (bad) return -1;
    memcpy(gpus, parsed, sizeof parsed);
    gpu_count = count;
    snprintf(driver_version, STR_LEN, "%s", version);
    cuda_version = cuda;
    init_error = error;
    driver_loaded_at_ms = loaded_at;
    return 0;
}

/* Takes the lock and refreshes the config; on success the caller must unlock. */
static nvmlReturn_t enter(void) {
    pthread_mutex_lock(&lock);
    if (init_count == 0) {
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    if (load_config()) {
        pthread_mutex_unlock(&lock);
        return NVML_ERROR_UNKNOWN;
    }
    return NVML_SUCCESS;
}

static nvmlReturn_t leave(nvmlReturn_t ret) {
    pthread_mutex_unlock(&lock);
    return ret;
}

/* Takes the lock and resolves a device handle; on success the caller must unlock. */
static nvmlReturn_t enter_device(nvmlDevice_t device, fake_gpu **out, unsigned needed) {
    nvmlReturn_t ret = enter();
    if (ret) return ret;
    if (device < handles || device >= handles + MAX_GPUS || device->slot >= gpu_count)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    fake_gpu *g = &gpus[device->slot];
    if (g->state == ST_LOST || g->state == ST_LOST_HANDLE) return leave(NVML_ERROR_GPU_IS_LOST);
    if (g->state == ST_RESET_REQUIRED) return leave(NVML_ERROR_RESET_REQUIRED);
    if (g->unsupported & needed) return leave(NVML_ERROR_NOT_SUPPORTED);
    *out = g;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_string(char *dst, unsigned length, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    pthread_mutex_lock(&lock);
    if (load_config()) return leave(NVML_ERROR_UNKNOWN);
    if (init_error) return leave(init_error);
    if (init_count++ == 0 && first_init_ms == 0) first_init_ms = now_us() / 1000;
    for (unsigned i = 0; i < MAX_GPUS; i++) handles[i].slot = i;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&lock);
    if (init_count == 0) return leave(NVML_ERROR_UNINITIALIZED);
    init_count--;
    return leave(NVML_SUCCESS);
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires reset";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    nvmlReturn_t ret = enter();
    if (ret) return ret;
    return leave(copy_string(version, length, driver_version));
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    nvmlReturn_t ret = enter();
    if (ret) return ret;
    if (!version) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *version = cuda_version;
    return leave(NVML_SUCCESS);
}

#ifndef FAKE_NVML_OLD_DRIVER
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}
#endif

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    nvmlReturn_t ret = enter();
    if (ret) return ret;
    if (!count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = gpu_count;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    nvmlReturn_t ret = enter();
    if (ret) return ret;
    if (!device || index >= gpu_count) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (gpus[index].state == ST_LOST_HANDLE) return leave(NVML_ERROR_GPU_IS_LOST);
    *device = &handles[index];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, 0);
    if (ret) return ret;
    if (!index) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *index = g->index;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, 0);
    if (ret) return ret;
    return leave(copy_string(uuid, length, g->uuid));
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, 0);
    if (ret) return ret;
    return leave(copy_string(name, length, g->name));
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, 0);
    if (ret) return ret;
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    /* v1 counts the driver's reservation as used, as real drivers do. */
    memory->total = g->memory_total;
    memory->used = g->memory_used + g->memory_reserved;
    memory->free = g->memory_total > memory->used ? g->memory_total - memory->used : 0;
    return leave(NVML_SUCCESS);
}

#ifndef FAKE_NVML_OLD_DRIVER
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, U_MEMORY_V2);
    if (ret) return ret;
    if (!memory) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != MEMORY_V2_VERSION) return leave(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    unsigned long long taken = g->memory_used + g->memory_reserved;
    memory->total = g->memory_total;
    memory->reserved = g->memory_reserved;
    memory->used = g->memory_used;
    memory->free = g->memory_total > taken ? g->memory_total - taken : 0;
    return leave(NVML_SUCCESS);
}
#endif

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, U_UTILIZATION);
    if (ret) return ret;
    if (!utilization) return leave(NVML_ERROR_INVALID_ARGUMENT);
    utilization->gpu = g->util;
    utilization->memory = g->memory_util;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, unsigned int sensor, unsigned int *temp) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, U_TEMPERATURE);
    if (ret) return ret;
    if (!temp || sensor != 0) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *temp = g->temperature;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, U_POWER);
    if (ret) return ret;
    if (!power) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *power = g->power_mw;
    return leave(NVML_SUCCESS);
}

#ifndef FAKE_NVML_OLD_DRIVER
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, U_ENERGY);
    if (ret) return ret;
    if (!energy) return leave(NVML_ERROR_INVALID_ARGUMENT);
    unsigned slot = device->slot;
    long long now = now_us();
    if (energy_at_us[slot] == 0 || strcmp(energy_uuid[slot], g->uuid) != 0) {
        /* First reading of this GPU in this process: as if drawing power_mw since load. */
        long long loaded_ms = driver_loaded_at_ms ? driver_loaded_at_ms : first_init_ms;
        energy_at_us[slot] = loaded_ms * 1000LL;
        energy_mj[slot] = g->energy_base_mj;
        energy_rem_nj[slot] = 0;
        snprintf(energy_uuid[slot], STR_LEN, "%s", g->uuid);
    }
    if (now > energy_at_us[slot]) {
        /* mW x µs = nJ; 128 bits so a long interval cannot overflow. */
        unsigned __int128 nj = (unsigned __int128)g->power_mw * (unsigned long long)(now - energy_at_us[slot]);
        nj += energy_rem_nj[slot];
        energy_mj[slot] += (unsigned long long)(nj / 1000000u);
        energy_rem_nj[slot] = (unsigned long long)(nj % 1000000u);
        energy_at_us[slot] = now;
    }
    *energy = energy_mj[slot];
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, U_POWER_LIMIT);
    if (ret) return ret;
    if (!limit) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *limit = g->power_limit_mw;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, unsigned int *pending) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, U_RETIRED);
    if (ret) return ret;
    if (!pending) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *pending = g->retired_pages_pending ? 1 : 0;
    return leave(NVML_SUCCESS);
}
#endif

nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, U_CC);
    if (ret) return ret;
    if (!major || !minor) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *major = g->cc_major;
    *minor = g->cc_minor;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, unsigned int error_type,
                                         unsigned int counter_type, unsigned long long *count) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, U_ECC);
    if (ret) return ret;
    if (!count || error_type > 1 || counter_type > 1) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *count = error_type == 1 ? g->ecc_uncorrected : g->ecc_corrected;
    return leave(NVML_SUCCESS);
}

/* Events: an event set remembers which GPUs registered for critical XIDs and how many of
 * each GPU's listed XIDs it has delivered. */
typedef struct nvmlEventSet_st {
    unsigned long long registered[MAX_GPUS];
    unsigned delivered[MAX_GPUS];
    char uuid[MAX_GPUS][STR_LEN];
} *nvmlEventSet_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    nvmlReturn_t ret = enter();
    if (ret) return ret;
    if (!set) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *set = calloc(1, sizeof **set);
    return leave(*set ? NVML_SUCCESS : NVML_ERROR_UNKNOWN);
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, 0);
    if (ret) return ret;
    if (!types) return leave(NVML_ERROR_INVALID_ARGUMENT);
    *types = EVENT_XID_CRITICAL;
    return leave(NVML_SUCCESS);
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types, nvmlEventSet_t set) {
    fake_gpu *g;
    nvmlReturn_t ret = enter_device(device, &g, 0);
    if (ret) return ret;
    if (!set) return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (types & ~EVENT_XID_CRITICAL) return leave(NVML_ERROR_NOT_SUPPORTED);
    set->registered[device->slot] |= types;
    snprintf(set->uuid[device->slot], STR_LEN, "%s", g->uuid);
    return leave(NVML_SUCCESS);
}

/* The next undelivered XID of a registered GPU, under the lock; 1 when one was found. */
static int next_xid(nvmlEventSet_t set, nvmlEventData_t *data) {
    for (unsigned slot = 0; slot < gpu_count; slot++) {
        fake_gpu *g = &gpus[slot];
        if (!(set->registered[slot] & EVENT_XID_CRITICAL) || strcmp(set->uuid[slot], g->uuid)) continue;
        if (set->delivered[slot] < g->xid_count) {
            data->device = &handles[slot];
            data->eventType = EVENT_XID_CRITICAL;
            data->eventData = g->xids[set->delivered[slot]++];
            data->gpuInstanceId = 0xFFFFFFFFu;
            data->computeInstanceId = 0xFFFFFFFFu;
            return 1;
        }
    }
    return 0;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    if (!set || !data) return NVML_ERROR_INVALID_ARGUMENT;
    long long deadline = now_us() + (long long)timeoutms * 1000LL;
    for (;;) {
        nvmlReturn_t ret = enter();
        if (ret) return ret;
        if (next_xid(set, data)) return leave(NVML_SUCCESS);
        pthread_mutex_unlock(&lock);
        if (now_us() >= deadline) return NVML_ERROR_TIMEOUT;
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    return nvmlEventSetWait_v2(set, data, timeoutms);
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    free(set);
    return NVML_SUCCESS;
}
