// Uses only the installed public headers: a round trip through a memory store and a LocalStore.
#include <granary/store.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer DIR\n");
    return 2;
  }
  for (std::string url : {std::string("mem://consumer"), std::string(argv[1])}) {
    auto store = granary::OpenStore(url);
    if (!store.ok()) {
      std::fprintf(stderr, "open %s: %s\n", url.c_str(), store.status().ToString().c_str());
      return 1;
    }
    granary::Status s = (*store)->Put("hello/key", std::string_view("installed granary works"));
    auto back = (*store)->GetAll("hello/key");
    if (!s.ok() || !back.ok() || *back != "installed granary works") {
      std::fprintf(stderr, "round trip through %s failed\n", url.c_str());
      return 1;
    }
    std::printf("%s: %s\n", url.c_str(), back->c_str());
  }
  return 0;
}
