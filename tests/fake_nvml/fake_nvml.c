/*
 * A stand-in for libnvidia-ml.so.1: the real nvidia-ml-py bindings load it by
 * name, so sweep_magic's NVML code runs unchanged on a machine without a GPU.
 *
 * It serves a scripted inventory read from the file named by FAKE_NVML_INVENTORY,
 * one record per line ('#' starts a comment; sizes in MiB):
 *
 *   gpu  <uuid> <total> <used> <util%> <name to the end of the line>
 *   mig  <slot> <uuid> <total> <used> <name...>   a MIG device of the last gpu; turns its MIG mode on
 *   migmode <current> <max count>                 the last gpu's MIG mode, with or without MIG devices
 *   proc <pid> <used or -1>                       a compute process on the last gpu or mig device
 *   gproc <pid> <used or -1>                      a graphics process on it
 *   fail <entry point> <nvmlReturn_t>             that entry point returns this code for the last
 *                                                 device, or for every call when given before any gpu
 *
 * With FAKE_NVML_TRACE set, every entry point appends its name to that file, so
 * a test can list which ones the bindings really called.
 *
 * Only the entry points sweep_magic reaches through nvidia-ml-py are here: a call to
 * any other makes pynvml raise NVMLError_FunctionNotFound, as an older driver would.
 * Callers are serialised (sweep_magic holds a lock around every NVML call), so the
 * file is simply re-read in place.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nvml.h"

#define MAX_GPUS 16
#define MAX_MIG 8
#define MAX_PROCS 16
#define MAX_FAILS 8
#define MIB 1048576ULL

struct fail {
    char fn[64];
    nvmlReturn_t code;
};

/* nvml.h leaves the handle type opaque; here a handle points at one of these. */
struct nvmlDevice_st {
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE];
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    unsigned long long total, used;
    unsigned int util;
    int is_mig;
    unsigned int mig_current, mig_max;
    struct nvmlDevice_st *mig[MAX_MIG]; /* by slot; NULL where no MIG device exists */
    nvmlProcessInfo_t procs[MAX_PROCS], gprocs[MAX_PROCS];
    unsigned int nprocs, ngprocs;
    struct fail fails[MAX_FAILS];
    unsigned int nfails;
};

static struct nvmlDevice_st gpus[MAX_GPUS];
static struct nvmlDevice_st migs[MAX_GPUS * MAX_MIG];
static struct nvmlDevice_st global; /* holds only the failures scripted before any gpu */
static unsigned int ngpus, nmigs;
static int init_count;

static void add_fail(struct nvmlDevice_st *dev, const char *fn, int code)
{
    if (dev->nfails < MAX_FAILS) {
        snprintf(dev->fails[dev->nfails].fn, sizeof dev->fails[0].fn, "%s", fn);
        dev->fails[dev->nfails++].code = (nvmlReturn_t)code;
    }
}

static void add_proc(nvmlProcessInfo_t *list, unsigned int *n, unsigned int pid, long long mib, int on_mig)
{
    if (*n >= MAX_PROCS)
        return;
    list[*n].pid = pid;
    /* NVML's "not available" is all bits set; nvidia-ml-py turns it into None. */
    list[*n].usedGpuMemory = mib < 0 ? (unsigned long long)NVML_VALUE_NOT_AVAILABLE : (unsigned long long)mib * MIB;
    /* Outside MIG both instance ids read 0xFFFFFFFF, as the header documents. */
    list[*n].gpuInstanceId = on_mig ? 1 : 0xFFFFFFFFu;
    list[*n].computeInstanceId = on_mig ? 0 : 0xFFFFFFFFu;
    (*n)++;
}

/* The rest of the line after `at`, without the newline: names have spaces. */
static void rest_of_line(char *dst, size_t size, const char *at)
{
    while (*at == ' ' || *at == '\t')
        at++;
    snprintf(dst, size, "%s", at);
    dst[strcspn(dst, "\r\n")] = '\0';
}

static void load_inventory(void)
{
    const char *path = getenv("FAKE_NVML_INVENTORY");
    FILE *f = path ? fopen(path, "r") : NULL;
    struct nvmlDevice_st *last = &global;
    char line[512], word[16], uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE], fn[64];
    unsigned long long total, used;
    unsigned int a, b;
    long long mib;
    int n, code;

    memset(gpus, 0, sizeof gpus);
    memset(migs, 0, sizeof migs);
    memset(&global, 0, sizeof global);
    ngpus = nmigs = 0;
    if (!f)
        return; /* no script: a driver with no GPUs */
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "%15s", word) != 1 || word[0] == '#')
            continue;
        if (!strcmp(word, "gpu") && ngpus < MAX_GPUS
            && sscanf(line, "gpu %95s %llu %llu %u %n", uuid, &total, &used, &a, &n) == 4) {
            last = &gpus[ngpus++];
            snprintf(last->uuid, sizeof last->uuid, "%s", uuid);
            rest_of_line(last->name, sizeof last->name, line + n);
            last->total = total * MIB;
            last->used = used * MIB;
            last->util = a;
        } else if (!strcmp(word, "mig") && ngpus > 0 && nmigs < MAX_GPUS * MAX_MIG
                   && sscanf(line, "mig %u %95s %llu %llu %n", &a, uuid, &total, &used, &n) == 4 && a < MAX_MIG) {
            struct nvmlDevice_st *parent = &gpus[ngpus - 1];
            last = &migs[nmigs++];
            last->is_mig = 1;
            snprintf(last->uuid, sizeof last->uuid, "%s", uuid);
            rest_of_line(last->name, sizeof last->name, line + n);
            last->total = total * MIB;
            last->used = used * MIB;
            parent->mig[a] = last;
            parent->mig_current = NVML_DEVICE_MIG_ENABLE;
            if (parent->mig_max == 0)
                parent->mig_max = 7; /* what an H100/H200 reports */
        } else if (!strcmp(word, "migmode") && ngpus > 0 && sscanf(line, "migmode %u %u", &a, &b) == 2) {
            gpus[ngpus - 1].mig_current = a;
            gpus[ngpus - 1].mig_max = b;
        } else if (!strcmp(word, "proc") && sscanf(line, "proc %u %lld", &a, &mib) == 2) {
            add_proc(last->procs, &last->nprocs, a, mib, last->is_mig);
        } else if (!strcmp(word, "gproc") && sscanf(line, "gproc %u %lld", &a, &mib) == 2) {
            add_proc(last->gprocs, &last->ngprocs, a, mib, last->is_mig);
        } else if (!strcmp(word, "fail") && sscanf(line, "fail %63s %d", fn, &code) == 2) {
            add_fail(last, fn, code);
        } else {
            fprintf(stderr, "fake NVML: cannot read line: %s", line);
        }
    }
    fclose(f);
}

static nvmlReturn_t scripted(const struct nvmlDevice_st *dev, const char *fn)
{
    for (unsigned int i = 0; dev && i < dev->nfails; i++)
        if (!strcmp(dev->fails[i].fn, fn))
            return dev->fails[i].code;
    return NVML_SUCCESS;
}

static void trace(const char *fn)
{
    const char *path = getenv("FAKE_NVML_TRACE");
    FILE *t = path ? fopen(path, "a") : NULL;
    if (t) {
        fprintf(t, "%s\n", fn);
        fclose(t);
    }
}

/* Every entry point but init starts here: trace the call, then the scripted answer. */
static nvmlReturn_t enter(const struct nvmlDevice_st *dev, const char *fn)
{
    trace(fn);
    nvmlReturn_t ret = scripted(&global, fn);
    return ret != NVML_SUCCESS ? ret : scripted(dev, fn);
}

/* Init reads the script first, so a failure scripted for init itself applies. */
static nvmlReturn_t start(const char *fn)
{
    trace(fn);
    load_inventory();
    nvmlReturn_t ret = scripted(&global, fn);
    if (ret == NVML_SUCCESS)
        init_count++;
    return ret;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return start(__func__);
}

/* nvidia-ml-py calls nvmlInitWithFlags; C programs built against nvml.h call this. */
nvmlReturn_t nvmlInit_v2(void)
{
    return start(__func__);
}

nvmlReturn_t nvmlShutdown(void)
{
    nvmlReturn_t ret = enter(NULL, __func__);
    if (ret == NVML_SUCCESS && init_count == 0)
        ret = NVML_ERROR_UNINITIALIZED;
    if (ret == NVML_SUCCESS)
        init_count--;
    return ret;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    trace(__func__);
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

/* A device call: initialised, a known handle, then the script. */
static nvmlReturn_t device_call(const struct nvmlDevice_st *dev, const char *fn)
{
    nvmlReturn_t ret = enter(dev, fn);
    if (ret != NVML_SUCCESS)
        return ret;
    if (init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    return dev ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}

/* nvml.h renames this to nvmlDeviceGetCount_v2, the symbol the bindings look up. */
nvmlReturn_t nvmlDeviceGetCount(unsigned int *count)
{
    nvmlReturn_t ret = enter(NULL, __func__);
    if (ret != NVML_SUCCESS)
        return ret;
    if (init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    /* Each inventory read starts here: re-reading lets a test change figures under a
     * running process, as memory and processes change on a real GPU. */
    load_inventory();
    *count = ngpus;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t ret = device_call(index < ngpus ? &gpus[index] : NULL, __func__);
    if (ret == NVML_SUCCESS)
        *device = &gpus[index];
    return ret;
}

static nvmlReturn_t copy_text(char *dst, unsigned int length, const char *src)
{
    if (strlen(src) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    nvmlReturn_t ret = device_call(device, __func__);
    return ret == NVML_SUCCESS ? copy_text(uuid, length, device->uuid) : ret;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    nvmlReturn_t ret = device_call(device, __func__);
    return ret == NVML_SUCCESS ? copy_text(name, length, device->name) : ret;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    nvmlReturn_t ret = device_call(device, __func__);
    if (ret == NVML_SUCCESS) {
        memory->total = device->total;
        memory->used = device->used;
        memory->free = device->total - device->used;
    }
    return ret;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    nvmlReturn_t ret = device_call(device, __func__);
    if (ret != NVML_SUCCESS)
        return ret;
    /* A real driver has no utilisation for a MIG device, nor for a GPU in MIG mode. */
    if (device->is_mig || device->mig_current == NVML_DEVICE_MIG_ENABLE)
        return NVML_ERROR_NOT_SUPPORTED;
    utilization->gpu = device->util;
    utilization->memory = 0;
    return NVML_SUCCESS;
}

/* NVML's two-call protocol: too small a buffer gets the count and INSUFFICIENT_SIZE. */
static nvmlReturn_t list_procs(const nvmlProcessInfo_t *procs, unsigned int n, unsigned int *count,
                               nvmlProcessInfo_t *infos)
{
    if (*count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = n;
    if (n)
        memcpy(infos, procs, n * sizeof *procs);
    return NVML_SUCCESS;
}

/* nvml.h maps the unversioned names of these two onto _v3, the symbols the bindings use. */
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos)
{
    nvmlReturn_t ret = device_call(device, __func__);
    return ret == NVML_SUCCESS ? list_procs(device->procs, device->nprocs, count, infos) : ret;
}

nvmlReturn_t nvmlDeviceGetGraphicsRunningProcesses(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos)
{
    nvmlReturn_t ret = device_call(device, __func__);
    return ret == NVML_SUCCESS ? list_procs(device->gprocs, device->ngprocs, count, infos) : ret;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    nvmlReturn_t ret = device_call(device, __func__);
    if (ret == NVML_SUCCESS && device->is_mig)
        ret = NVML_ERROR_NOT_SUPPORTED;
    if (ret == NVML_SUCCESS)
        *currentMode = *pendingMode = device->mig_current;
    return ret;
}

nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    nvmlReturn_t ret = device_call(device, __func__);
    if (ret == NVML_SUCCESS)
        *count = device->is_mig ? 0 : device->mig_max;
    return ret;
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index, nvmlDevice_t *migDevice)
{
    nvmlReturn_t ret = device_call(device, __func__);
    if (ret != NVML_SUCCESS)
        return ret;
    if (device->is_mig || device->mig_current != NVML_DEVICE_MIG_ENABLE)
        return NVML_ERROR_NOT_SUPPORTED;
    /* Slots up to the maximum may be empty: a real driver says NOT_FOUND for those. */
    if (index >= MAX_MIG || index >= device->mig_max || !device->mig[index])
        return NVML_ERROR_NOT_FOUND;
    *migDevice = device->mig[index];
    return NVML_SUCCESS;
}
