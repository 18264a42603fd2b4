// Protocol names of <xen/io/protocols.h>.
#include "ring/blkif_abi.h"

namespace blk {

std::optional<Abi> ParseProtocol(std::string_view protocol) {
  if (protocol.empty() || protocol == XEN_IO_PROTO_ABI_NATIVE) return kNativeAbi;
  if (protocol == XEN_IO_PROTO_ABI_X86_32) return Abi::kX86_32;
  if (protocol == XEN_IO_PROTO_ABI_X86_64) return Abi::kX86_64;
  return std::nullopt;
}

const char* AbiName(Abi abi) {
  return abi == Abi::kX86_64 ? XEN_IO_PROTO_ABI_X86_64 : XEN_IO_PROTO_ABI_X86_32;
}

}  // namespace blk
