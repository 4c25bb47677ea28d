#!/usr/bin/env python3
"""Validates Kubernetes YAML for the Rust tests (called by cargo test).

  validate.py k8s VERSION FILE...        kubernetes-validate --strict, pinned version
  validate.py crs CRDS VALID INVALID     custom resources against their CRD's openAPIV3Schema:
                                         every document of VALID passes, every one of INVALID fails

Exit 0 when all is as expected; prints one line per failure otherwise.
Exit 3 when a Python package is missing (the test says so and skips).
"""
import sys

try:
    import yaml
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate import utils as kv_utils  # noqa: F401
except ImportError as e:  # pragma: no cover
    print(f"missing python package: {e.name}", file=sys.stderr)
    sys.exit(3)


def docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def k8s(version, files):
    bad = 0
    for path in files:
        for d in docs(path):
            what = f"{path}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except Exception as e:  # ValidationError, SchemaNotFoundError, ...
                print(f"INVALID {what}: {getattr(e, 'message', e)}")
                bad += 1
    return bad


def schemas(crd_file):
    out = {}
    for d in docs(crd_file):
        if d.get("kind") != "CustomResourceDefinition":
            continue
        spec = d["spec"]
        for v in spec["versions"]:
            key = (f"{spec['group']}/{v['name']}", spec["names"]["kind"])
            out[key] = v["schema"]["openAPIV3Schema"]
    return out


def crs(crd_file, valid, invalid):
    s = schemas(crd_file)
    bad = 0
    for path, want_ok in ((valid, True), (invalid, False)):
        for d in docs(path):
            key = (d["apiVersion"], d["kind"])
            what = f"{path}: {d['kind']}/{d['metadata']['name']}"
            if key not in s:
                print(f"NO SCHEMA for {key} ({what})")
                bad += 1
                continue
            errors = list(jsonschema.Draft7Validator(s[key]).iter_errors(d))
            if want_ok and errors:
                print(f"INVALID {what}: {errors[0].message}")
                bad += 1
            if not want_ok and not errors:
                print(f"ACCEPTED but should fail: {what}")
                bad += 1
    return bad


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "k8s":
        n = k8s(args[0], args[1:])
    elif mode == "crs":
        n = crs(*args)
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        sys.exit(2)
    sys.exit(1 if n else 0)
