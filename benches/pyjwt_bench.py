"""Times PyJWT's `jwt.decode` per token for HS256, RS256, ES256 and EdDSA,
on the keys and claims of the Rust bench (benches/benches/jwt.rs): the
throw-away keys of filters/tests/fixtures/, tokens minted here once, exp in
2100, issuer and audience checked like the gate's policy. Keys are loaded
once (a cryptography key object, not PEM text per call), as the gate does.

Prints one line per algorithm, `ALG MICROSECONDS` (median of the repeats);
`--json` prints {"HS256": us, ...} instead.
Run: .venv/bin/python benches/pyjwt_bench.py [--json] [--seconds 1.0]
"""
import argparse
import json
import statistics
import sys
import timeit
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

FIXTURES = Path(__file__).resolve().parent.parent / "filters" / "tests" / "fixtures"
HS256_SECRET = b"asgi-gate-bench-secret-0123456789abcdef"  # as in benches/src/lib.rs
CLAIMS = {
    "sub": "user-42",
    "iss": "https://issuer.example",
    "aud": "api",
    "iat": 1_700_000_000,
    "exp": 4_102_444_800,
    "jti": "0f8fad5b-d9cb-469f-a165-70867728950e",
    "scope": "read write",
}


def keys():
    def pem(name, private):
        data = (FIXTURES / name).read_bytes()
        return load_pem_private_key(data, None) if private else load_pem_public_key(data)

    return {
        "HS256": (HS256_SECRET, HS256_SECRET),
        "RS256": (pem("rsa_private.pem", True), pem("rsa_public.pem", False)),
        "ES256": (pem("ec_private.pem", True), pem("ec_public.pem", False)),
        "EdDSA": (pem("ed_private.pem", True), pem("ed_public.pem", False)),
    }


def time_decode(alg, signing, verifying, seconds, repeats=5):
    token = jwt.encode(CLAIMS, signing, algorithm=alg)

    def decode():
        return jwt.decode(
            token,
            verifying,
            algorithms=[alg],
            audience="api",
            issuer="https://issuer.example",
            options={"require": ["exp"]},
        )

    assert decode()["sub"] == "user-42"
    timer = timeit.Timer(decode)
    number, took = timer.autorange()
    number = max(1, int(number * seconds / max(took, 1e-9)))
    runs = timer.repeat(repeat=repeats, number=number)
    return statistics.median(runs) / number * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--seconds", type=float, default=1.0, help="per repeat, per algorithm")
    a = ap.parse_args()
    results = {
        alg: time_decode(alg, s, v, a.seconds) for alg, (s, v) in keys().items()
    }
    if a.json:
        json.dump(results, sys.stdout)
        print()
    else:
        print(f"PyJWT {jwt.__version__}")
        for alg, us in results.items():
            print(f"{alg} {us:.2f}")


if __name__ == "__main__":
    main()
