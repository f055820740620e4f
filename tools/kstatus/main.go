// Command kstatus prints what the kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus/status),
// the status logic Flux and kpt use, computes for one Kubernetes object read as JSON on stdin.
//
// Output: one JSON line {"status": "...", "message": "..."}. The tests run it on live LinkTokens
// so that what Flux's `wait: true` and kpt's `live apply` see is proven, not guessed.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// version is set at build time to the pinned cli-utils version, so the build script can tell a
// stale cached binary from a current one.
var version = "unknown"

func main() {
	if len(os.Args) == 2 && os.Args[1] == "--version" {
		fmt.Println(version)
		return
	}
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	data, err := io.ReadAll(in)
	if err != nil {
		return fmt.Errorf("reading stdin: %w", err)
	}
	// UnmarshalJSON keeps integers as int64 (plain encoding/json would give float64, which
	// kstatus's observedGeneration comparison rejects).
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON(data); err != nil {
		return fmt.Errorf("decoding object: %w", err)
	}
	res, err := status.Compute(&u)
	if err != nil {
		return fmt.Errorf("computing status: %w", err)
	}
	return json.NewEncoder(out).Encode(struct {
		Status  string `json:"status"`
		Message string `json:"message"`
	}{Status: res.Status.String(), Message: res.Message})
}
