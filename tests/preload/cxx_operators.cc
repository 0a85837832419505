// cxx_operators.cc: C++'s operator new/delete in every form, served by
// libheapkit.so itself (allocators/shim/tests/preload/c_api.rs:
// cxx_operators_are_heapkits): the operators resolve to the library, huge
// requests throw std::bad_alloc after the new-handler ran, nothrow forms
// return null, aligned forms align, sized and aligned deletes free.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <new>
#include <vector>

static int handler_calls;
static void handler() {
    handler_calls++;
    std::set_new_handler(nullptr);  // the next failure throws
}

#define CHECK(cond)                                              \
    do {                                                         \
        if (!(cond)) {                                           \
            std::printf("failed: %s (line %d)\n", #cond, __LINE__); \
            return 1;                                            \
        }                                                        \
    } while (0)

int main() {
    const char *names[] = {"_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnwmSt11align_val_t",
                           "_ZdlPv", "_ZdlPvm", "_ZdlPvSt11align_val_t", "_ZdaPvmSt11align_val_t"};
    for (const char *n : names) {
        Dl_info info;
        void *f = dlsym(RTLD_DEFAULT, n);
        CHECK(f != nullptr && dladdr(f, &info) && std::strstr(info.dli_fname, "libheapkit"));
    }
    // Plain, array, sized delete.
    std::vector<int *> v;
    for (int i = 0; i < 10000; i++) v.push_back(new int(i));
    for (int i = 0; i < 10000; i++) {
        CHECK(*v[i] == i);
        delete v[i];
    }
    char *a = new char[100000];
    std::memset(a, 1, 100000);
    delete[] a;
    void *s = ::operator new(48);
    ::operator delete(s, 48);
    // new(0) is a unique block.
    void *z1 = ::operator new(0), *z2 = ::operator new(0);
    CHECK(z1 && z2 && z1 != z2);
    ::operator delete(z1);
    ::operator delete(z2);
    // Aligned forms.
    for (std::size_t align : {32, 256, 4096, 65536, 1 << 20}) {
        void *p = ::operator new(1000, std::align_val_t(align));
        CHECK(reinterpret_cast<std::uintptr_t>(p) % align == 0);
        std::memset(p, 2, 1000);
        ::operator delete(p, 1000, std::align_val_t(align));
        void *q = ::operator new[](10, std::align_val_t(align), std::nothrow);
        CHECK(q && reinterpret_cast<std::uintptr_t>(q) % align == 0);
        ::operator delete[](q, std::align_val_t(align));
    }
    // Exhaustion: nothrow gives null; the throwing forms call the
    // new-handler, then throw std::bad_alloc.
    const std::size_t huge = std::size_t(1) << 62;
    CHECK(::operator new(huge, std::nothrow) == nullptr);
    CHECK(::operator new[](huge, std::nothrow) == nullptr);
    CHECK(::operator new(huge, std::align_val_t(64), std::nothrow) == nullptr);
    std::set_new_handler(handler);
    bool threw = false;
    try {
        void *p = ::operator new(huge);
        std::printf("got %p\n", p);
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw && handler_calls == 1);
    threw = false;
    try {
        void *p = ::operator new[](huge, std::align_val_t(128));
        std::printf("got %p\n", p);
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK(threw);
    std::puts("ok cxx operators");
    return 0;
}
