// Command tarlist prints Go archive/tar's view of a tar stream read on stdin, for the parser
// differential (tests/unit/test_tar_differential.py, RELIABILITY.md #61 and #68).
//
// It reads the way containerd and Docker apply a layer: Reader.Next for each header, then io.Copy
// of the member's data. One JSON line per header; names are raw bytes (base64 in JSON), so a name
// that is not UTF-8 reaches the test unchanged. On an error it prints {"error": ...} and exits 1.
package main

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
)

// Data past this size is left to Next, which skips the stored bytes: a sparse member's apparent
// size can be a TiB of holes that io.Copy would materialise as zeros.
const copyCap = 1 << 30

type entry struct {
	Name     []byte   `json:"name"`
	Linkname []byte   `json:"linkname"`
	Typeflag string   `json:"typeflag"`
	Size     int64    `json:"size"`
	Mode     int64    `json:"mode"`
	Devmajor int64    `json:"devmajor"`
	Devminor int64    `json:"devminor"`
	Format   string   `json:"format"`
	PAXKeys  []string `json:"pax_keys"`
	Copied   int64    `json:"copied"`
}

func main() {
	out := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(out)
	fail := func(err error) {
		_ = enc.Encode(map[string]string{"error": err.Error()})
		_ = out.Flush()
		os.Exit(1)
	}
	tr := tar.NewReader(bufio.NewReaderSize(os.Stdin, 1<<20))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail(err)
		}
		keys := make([]string, 0, len(hdr.PAXRecords))
		for k := range hdr.PAXRecords {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		e := entry{
			Name: []byte(hdr.Name), Linkname: []byte(hdr.Linkname), Typeflag: string([]byte{hdr.Typeflag}),
			Size: hdr.Size, Mode: hdr.Mode, Devmajor: hdr.Devmajor, Devminor: hdr.Devminor,
			Format: hdr.Format.String(), PAXKeys: keys,
		}
		if hdr.Size <= copyCap {
			n, err := io.Copy(io.Discard, tr)
			e.Copied = n
			if err != nil {
				_ = enc.Encode(e)
				fail(fmt.Errorf("data of %q: %w", hdr.Name, err))
			}
		}
		if err := enc.Encode(e); err != nil {
			fail(err)
		}
	}
	if err := out.Flush(); err != nil {
		os.Exit(1)
	}
}
