// cxx.cc: C++ new/delete (libstdc++ forwards them to malloc/free) under
// libheapkit.so: containers, strings, aligned new, exceptions, threads.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

struct alignas(256) Wide {
    char bytes[256];
};

int main() {
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; t++) {
        threads.emplace_back([t] {
            std::map<int, std::string> m;
            for (int i = 0; i < 20000; i++) m[i] = std::string(i % 200 + 1, char('a' + t));
            std::vector<std::unique_ptr<Wide>> wides;
            for (int i = 0; i < 1000; i++) {
                wides.emplace_back(new Wide);
                if (reinterpret_cast<uintptr_t>(wides.back().get()) % 256 != 0) std::abort();
            }
            for (int i = 0; i < 20000; i++)
                if (m[i].size() != size_t(i % 200 + 1)) std::abort();
            try {
                throw std::runtime_error(std::string(1000, 'x'));
            } catch (const std::exception &e) {
                if (std::string(e.what()).size() != 1000) std::abort();
            }
        });
    }
    for (auto &t : threads) t.join();
    int *arr = new int[1 << 20];
    arr[(1 << 20) - 1] = 5;
    delete[] arr;
    std::puts("ok cxx");
    return 0;
}
