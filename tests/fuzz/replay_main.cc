// The main() of a fuzz target built without libFuzzer: runs LLVMFuzzerTestOneInput once on every file of the
// corpus directories (or files) named on the command line, so that ctest replays the kept corpora in the
// Release and the ASan builds. Fails if a directory holds no input at all: a missing corpus must not pass.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<uint8_t> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  size_t total = 0;
  for (int i = 1; i < argc; ++i) {
    std::vector<fs::path> inputs;
    std::error_code error;
    if (fs::is_directory(argv[i], error)) {
      for (const auto& entry : fs::directory_iterator(argv[i])) {
        if (entry.is_regular_file()) inputs.push_back(entry.path());
      }
    } else if (fs::is_regular_file(argv[i], error)) {
      inputs.push_back(argv[i]);
    }
    if (inputs.empty()) {
      std::fprintf(stderr, "%s: no inputs in %s\n", argv[0], argv[i]);
      return 1;
    }
    std::sort(inputs.begin(), inputs.end());  // a deterministic order, for reproducible failures
    for (const fs::path& input : inputs) {
      std::vector<uint8_t> bytes = ReadFile(input);
      // A null data pointer for an empty input, as libFuzzer never passes one; keep a valid address.
      static const uint8_t kEmpty = 0;
      LLVMFuzzerTestOneInput(bytes.empty() ? &kEmpty : bytes.data(), bytes.size());
      ++total;
    }
  }
  std::printf("%s: %zu inputs replayed, no invariant broken\n", argv[0], total);
  return 0;
}
