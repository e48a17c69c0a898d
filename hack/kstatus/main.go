// Command kstatus asks the real sigs.k8s.io/cli-utils kstatus library (the one Flux,
// Helm 4 --wait and Config Sync use) for its verdict on one Kubernetes object.
//
// Usage: kstatus < object.json   ->   {"status": "InProgress", "message": "..."}
//
// The rollout and GitOps tests (tests/unit/gitops/) feed it recorded FederatedRouter
// statuses so that "kstatus reads every phase right" is checked against the library
// itself, not a re-implementation of its rules.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	obj := map[string]interface{}{}
	if err := json.Unmarshal(raw, &obj); err != nil {
		fail("stdin is not a JSON object: %v", err)
	}
	// Decode again with the apimachinery decoder: integers must stay int64, as they are
	// when kstatus reads objects from the API server (encoding/json would give float64).
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		fail("stdin is not a Kubernetes object: %v", err)
	}
	res, err := status.Compute(u)
	if err != nil {
		fail("kstatus could not compute a status: %v", err)
	}
	out, _ := json.Marshal(verdict{Status: res.Status.String(), Message: res.Message})
	fmt.Println(string(out))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(2)
}
