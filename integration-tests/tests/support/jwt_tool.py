#!/usr/bin/env python3
"""Keys and tokens for the auth integration tests, made at test time.

Subcommands (each prints its result on stdout):

  genkeys rsa|ec|ed25519 --out DIR --kid KID
      Writes DIR/KID.key.pem (PKCS#8 private key), DIR/KID.pub.pem (SPKI
      public key) and DIR/KID.jwk.json (public JWK with kid, alg and use);
      prints the JWK.

  jwks --out FILE JWK_FILE...
      Writes {"keys": [...]} made of the given JWK files, atomically
      (temporary file + rename), so a server never serves half a file.

  sign --alg ALG (--key PEM_FILE | --secret TEXT | --secret-file FILE)
       (--claims JSON | --payload-raw TEXT) [--kid KID]
       [--header JSON | --header-raw TEXT]
      Prints a compact JWS. Claims values "now+N"/"now-N" (strings) become
      unix times. HS* tokens are signed here with hmac so that any bytes
      (e.g. an RSA public key PEM: algorithm confusion) can be the secret;
      `--alg none` gives an unsigned token with an empty signature.
      `--header-raw` (HS* and none only) is the JOSE header text as is.

  batch
      Reads a JSON array of argument lists from stdin, runs each as one of
      the subcommands above and prints a JSON array of their outputs (one
      Python start for many tokens).
"""

import argparse
import base64
import hashlib
import hmac
import io
import json
import os
import sys
import time
from contextlib import redirect_stdout

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def genkeys(args) -> None:
    if args.kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "RS256"
    elif args.kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "ES256"
    elif args.kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "EdDSA"
    else:
        raise SystemExit(f"unknown key kind {args.kind}")
    jwk.update({"kid": args.kid, "alg": alg, "use": "sig"})
    base = os.path.join(args.out, args.kid)
    with open(base + ".key.pem", "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(base + ".pub.pem", "wb") as f:
        f.write(
            key.public_key().public_bytes(
                serialization.Encoding.PEM,
                serialization.PublicFormat.SubjectPublicKeyInfo,
            )
        )
    with open(base + ".jwk.json", "w") as f:
        json.dump(jwk, f)
    print(json.dumps(jwk))


def jwks(args) -> None:
    keys = []
    for path in args.jwk:
        with open(path) as f:
            keys.append(json.load(f))
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"keys": keys}, f)
    os.replace(tmp, args.out)
    print(json.dumps({"keys": keys}))


def resolve_times(claims: dict) -> dict:
    now = int(time.time())
    out = {}
    for k, v in claims.items():
        if isinstance(v, str) and v.startswith("now"):
            rest = v[3:]
            v = now + (int(rest) if rest else 0)
        out[k] = v
    return out


def sign(args) -> None:
    if args.payload_raw is not None:
        payload = args.payload_raw.encode()
    else:
        claims = resolve_times(json.loads(args.claims or "{}"))
        payload = json.dumps(claims, separators=(",", ":")).encode()
    header = {"alg": args.alg, "typ": "JWT"}
    if args.kid:
        header["kid"] = args.kid
    if args.header:
        header.update(json.loads(args.header))

    alg = args.alg
    unsigned = alg.lower() == "none"
    if unsigned or alg.startswith("HS"):
        if args.secret is not None:
            secret = args.secret.encode()
        elif args.secret_file is not None:
            with open(args.secret_file, "rb") as f:
                secret = f.read()
        else:
            secret = b""
        header_bytes = (
            args.header_raw.encode()
            if args.header_raw is not None
            else json.dumps(header, separators=(",", ":")).encode()
        )
        signing_input = b64url(header_bytes) + "." + b64url(payload)
        if unsigned:
            print(signing_input + ".")
            return
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        sig = hmac.new(secret, signing_input.encode(), digest).digest()
        print(signing_input + "." + b64url(sig))
        return

    with open(args.key, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    extra = {k: v for k, v in header.items() if k not in ("alg",)}
    print(jwt.api_jws.encode(payload, key, algorithm=alg, headers=extra))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jwt_tool")
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("genkeys")
    g.add_argument("kind", choices=["rsa", "ec", "ed25519"])
    g.add_argument("--out", required=True)
    g.add_argument("--kid", required=True)
    g.set_defaults(func=genkeys)

    j = sub.add_parser("jwks")
    j.add_argument("--out", required=True)
    j.add_argument("jwk", nargs="*")
    j.set_defaults(func=jwks)

    s = sub.add_parser("sign")
    s.add_argument("--alg", required=True)
    s.add_argument("--key")
    s.add_argument("--secret")
    s.add_argument("--secret-file")
    s.add_argument("--claims")
    s.add_argument("--payload-raw")
    s.add_argument("--kid")
    s.add_argument("--header")
    s.add_argument("--header-raw")
    s.set_defaults(func=sign)

    sub.add_parser("batch").set_defaults(func=None)
    return p


def run(argv) -> str:
    args = parser().parse_args(argv)
    if args.func is None:
        raise SystemExit("batch cannot be nested")
    buf = io.StringIO()
    with redirect_stdout(buf):
        args.func(args)
    return buf.getvalue().strip()


def main() -> None:
    if sys.argv[1:2] == ["batch"]:
        calls = json.load(sys.stdin)
        print(json.dumps([run(argv) for argv in calls]))
    else:
        print(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
