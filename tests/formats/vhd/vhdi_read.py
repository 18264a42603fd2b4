#!/usr/bin/python3
# Reads a VHD chain with libvhdi (Debian's python3-libvhdi), an implementation independent of ours, and writes the
# disk's contents to OUT. Usage: vhdi_read.py OUT TOP [PARENT ...] (the chain from the top down to the base).
import sys

import pyvhdi


def main():
    out_path, paths = sys.argv[1], sys.argv[2:]
    images = []
    for path in paths:
        image = pyvhdi.file()
        image.open(path)
        images.append(image)
    for child, parent in zip(reversed(images[:-1]), reversed(images[1:])):
        child.set_parent(parent)
    top = images[0]
    with open(out_path, "wb") as out:
        offset = 0
        while offset < top.media_size:
            length = min(1 << 20, top.media_size - offset)
            out.write(top.read_buffer_at_offset(length, offset))
            offset += length
    print("parent_filename=%s" % (top.parent_filename,))


if __name__ == "__main__":
    main()
