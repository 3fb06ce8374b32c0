// Go's view of tar archives, the oracle strata-tar is compared with: every entry archive/tar
// yields, field by field, with its data's digest, and whether reading stopped at an error.
//
//	oracle FILE...   one JSON line per archive
//	oracle -stream   archives on stdin, each after its length (4 bytes, little-endian),
//	                 one JSON line each (for the differential fuzzer)
//
// The output's form is the one tests/view/mod.rs gives strata-tar's view.
package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"reflect"
	"sort"
	"unsafe"
)

type entry struct {
	Kind  int         `json:"kind"`
	Name  string      `json:"name,omitempty"`
	Link  string      `json:"link,omitempty"`
	Size  int64       `json:"size"`
	Mode  int64       `json:"mode"`
	UID   int64       `json:"uid"`
	GID   int64       `json:"gid"`
	MTime [2]int64    `json:"mtime"`
	PAX   [][2]string `json:"pax"`
	Holes [][2]int64  `json:"holes"`
	Data  string      `json:"data"`
}

type view struct {
	Entries []entry `json:"entries"`
	Error   string  `json:"error"`
}

func main() {
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	if len(os.Args) == 2 && os.Args[1] == "-stream" {
		in := bufio.NewReader(os.Stdin)
		for {
			var length uint32
			if err := binary.Read(in, binary.LittleEndian, &length); err != nil {
				return
			}
			archive := make([]byte, length)
			if _, err := io.ReadFull(in, archive); err != nil {
				panic(err)
			}
			emit(out, read(bytesReader(archive)))
			out.Flush()
		}
	}
	for _, path := range os.Args[1:] {
		file, err := os.Open(path)
		if err != nil {
			panic(err)
		}
		emit(out, read(bufio.NewReader(file)))
		file.Close()
	}
}

func emit(out io.Writer, v view) {
	line, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(out, "%s\n", line)
}

func bytesReader(b []byte) io.Reader { return &sliceReader{b} }

type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

func read(r io.Reader) view {
	tr := tar.NewReader(r)
	v := view{Entries: []entry{}}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return v
		}
		if err != nil {
			v.Error = err.Error()
			return v
		}
		e := entry{Kind: int(hdr.Typeflag), PAX: records(hdr.PAXRecords)}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			// Go fills nothing else of it reliably (records apply in map order).
			v.Entries = append(v.Entries, e)
			continue
		}
		e.Name = hex.EncodeToString([]byte(hdr.Name))
		e.Link = hex.EncodeToString([]byte(hdr.Linkname))
		e.Size, e.Mode = hdr.Size, hdr.Mode
		e.UID, e.GID = int64(hdr.Uid), int64(hdr.Gid)
		e.MTime = [2]int64{hdr.ModTime.Unix(), int64(hdr.ModTime.Nanosecond())}
		e.Holes = holes(tr)
		digest, err := data(tr, e.Holes)
		v.Entries = append(v.Entries, e)
		if err != nil {
			v.Error = err.Error()
			return v
		}
		v.Entries[len(v.Entries)-1].Data = digest
	}
}

func records(pax map[string]string) [][2]string {
	if pax == nil {
		return nil
	}
	keys := make([]string, 0, len(pax))
	for k := range pax {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := [][2]string{}
	for _, k := range keys {
		out = append(out, [2]string{hex.EncodeToString([]byte(k)), hex.EncodeToString([]byte(pax[k]))})
	}
	return out
}

// current is the reader's unexported reader of the entry's data.
func current(tr *tar.Reader) reflect.Value {
	field := reflect.ValueOf(tr).Elem().FieldByName("curr")
	return reflect.NewAt(field.Type(), unsafe.Pointer(field.UnsafeAddr())).Elem()
}

// holes are a sparse file's holes as the reader keeps them, empty ones left out; nil when
// the entry is not sparse.
func holes(tr *tar.Reader) [][2]int64 {
	curr := current(tr).Elem()
	if curr.Type().String() != "*tar.sparseFileReader" {
		return nil
	}
	sp := curr.Elem().FieldByName("sp")
	out := [][2]int64{}
	for i := 0; i < sp.Len(); i++ {
		offset, length := sp.Index(i).Field(0).Int(), sp.Index(i).Field(1).Int()
		if length > 0 {
			out = append(out, [2]int64{offset, length})
		}
	}
	return out
}

// data is the digest of the entry's bytes outside its holes, read through tar.Reader.Read
// as the engines read it. Only the zeros of holes are not read one by one: before each
// Read, a position inside a hole is moved to the hole's last byte, as reading the zeros
// would have moved it, so that Go's own code still reads every transition and checks how
// the file ends (a 60 GB sparse file costs nothing).
func data(tr *tar.Reader, holes [][2]int64) (string, error) {
	hash := sha256.New()
	buf := make([]byte, 64<<10)
	curr := current(tr).Elem()
	sparse := curr.Type().String() == "*tar.sparseFileReader"
	var pos int64
	for {
		if sparse {
			pos = skipHole(curr.Elem())
		}
		n, err := tr.Read(buf)
		hashOutside(hash, holes, pos, buf[:n])
		pos += int64(n)
		if err == io.EOF {
			return hex.EncodeToString(hash.Sum(nil)), nil
		}
		if err != nil {
			return "", err
		}
	}
}

// skipHole moves a sparse reader inside a hole to the hole's last byte; returns its
// position.
func skipHole(sr reflect.Value) int64 {
	posField := sr.FieldByName("pos")
	pos := reflect.NewAt(posField.Type(), unsafe.Pointer(posField.UnsafeAddr())).Elem()
	sp := sr.FieldByName("sp")
	if sp.Len() > 0 {
		start := sp.Index(0).Field(0).Int()
		end := start + sp.Index(0).Field(1).Int()
		if pos.Int() >= start && pos.Int() < end-1 {
			pos.SetInt(end - 1)
		}
	}
	return pos.Int()
}

// hashOutside hashes the bytes of b, which starts at offset at, that fall outside every
// hole (holes are in order).
func hashOutside(h hash.Hash, holes [][2]int64, at int64, b []byte) {
	for _, hole := range holes {
		end := at + int64(len(b))
		if hole[0] >= end {
			break
		}
		if hole[0]+hole[1] <= at {
			continue
		}
		if hole[0] > at {
			h.Write(b[:hole[0]-at])
		}
		skip := min64(hole[0]+hole[1], end) - at
		b, at = b[skip:], at+skip
	}
	h.Write(b)
}

func min64(a, b int64) int64 {
	if a < b {
		return a
	}
	return b
}
