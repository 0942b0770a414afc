"""Bucket fixtures for tests/cli_bucket.rs, run with the moto venv's Python
(boto3): create N objects of varied keys, sizes, content types and user
metadata; change some; compare two buckets object by object (bytes as
SHA-256, content type, user metadata)."""
import zlib
import sys, json, os, random, hashlib
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config

def client(endpoint):
    return boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))

SPECIAL = ["weird/../dotdot", "weird//double", "/leading", "trailing/", "weird/./dot", "100%.txt", "a b/c d e.txt", "ünï/códe/文件.txt"]

def spec(n):
    out = []
    for i in range(n):
        if i < len(SPECIAL):
            key = SPECIAL[i]
        elif i % 5 == 0:
            key = f"with space/file {i}.txt"
        elif i % 5 == 1:
            key = f"unicode/ñandú-文件-{i}.txt"
        elif i % 5 == 2:
            key = f"deep/a/b/c/d/e/{i}"
        else:
            key = f"data/{i % 10}/obj-{i:05}.bin"
        if i in (100, 200):
            size = 20 * 1024 * 1024 + i
        elif i in (300, 301, 302):
            size = (2 + i - 300) * 1024 * 1024 + 17
        elif i % 50 == 7:
            size = random.Random(i).randint(1024, 64 * 1024)
        else:
            size = random.Random(i).randint(0, 200)
        meta = {"owner": "team-x", "n": str(i)} if i % 7 == 0 else {}
        ctype = "text/plain" if i % 3 == 0 else ("application/x-custom" if i % 3 == 1 else None)
        out.append((key, size, meta, ctype))
    return out

def put(c, bucket, key, size, meta, ctype, seed):
    body = random.Random(seed).randbytes(size)
    kw = {"Bucket": bucket, "Key": key, "Body": body, "Metadata": meta}
    if ctype:
        kw["ContentType"] = ctype
    c.put_object(**kw)

def list_all(c, bucket):
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = o
    return out

def describe(c, bucket, key):
    r = c.get_object(Bucket=bucket, Key=key)
    body = r["Body"].read()
    return hashlib.sha256(body).hexdigest(), len(body), r.get("ContentType"), r.get("Metadata", {})

def main():
    cmd, endpoint = sys.argv[1], sys.argv[2]
    c = client(endpoint)
    pool = ThreadPoolExecutor(16)
    if cmd == "create":
        bucket, n = sys.argv[3], int(sys.argv[4])
        objs = spec(n)
        list(pool.map(lambda o: put(c, bucket, *o, seed=zlib.crc32(o[0].encode())), objs))
        print(json.dumps({"objects": len(objs), "bytes": sum(o[1] for o in objs)}))
    elif cmd == "create-long":
        # N small objects with ~780-byte keys (tests/cli_bucket_memory.rs
        # computes the same keys and contents).
        bucket, n = sys.argv[3], int(sys.argv[4])
        def key(i):
            return f"{'d' * 250}/{'e' * 250}/{i % 97:02}/{'f' * 240}-{i:06}"
        def body(i):
            return (f"{i:06}" * (1 + i % 7)).encode()
        list(pool.map(lambda i: c.put_object(Bucket=bucket, Key=key(i), Body=body(i)), range(n)))
        print(json.dumps({"objects": n, "bytes": sum(len(body(i)) for i in range(n))}))
    elif cmd == "modify":
        bucket, n, count = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        objs = spec(n)
        step = n // count
        changed = [objs[i * step + 3] for i in range(count)]
        # Same size, different content (the ETag and SHA-256 change).
        list(pool.map(lambda o: put(c, bucket, *o, seed=999_999), changed))
        print(json.dumps({"changed": [o[0] for o in changed]}))
    elif cmd == "compare":
        a, b = sys.argv[3], sys.argv[4]
        la, lb = list_all(c, a), list_all(c, b)
        problems = []
        if set(la) != set(lb):
            problems.append({"missing": sorted(set(la) - set(lb))[:20], "extra": sorted(set(lb) - set(la))[:20]})
        keys = sorted(set(la) & set(lb))
        da = dict(zip(keys, pool.map(lambda k: describe(c, a, k), keys)))
        db = dict(zip(keys, pool.map(lambda k: describe(c, b, k), keys)))
        for k in keys:
            x, y = da[k], db[k]
            if x != y:
                problems.append({"key": k, "a": da[k], "b": db[k]})
        print(json.dumps({"compared": len(keys), "problems": problems[:20], "bytes": sum(v[1] for v in da.values())}))
    elif cmd == "put":
        c.put_object(Bucket=sys.argv[3], Key=sys.argv[4], Body=b"not the drill's")
        print(json.dumps(sys.argv[4]))
    elif cmd == "delete":
        c.delete_object(Bucket=sys.argv[3], Key=sys.argv[4])
        print(json.dumps(sys.argv[4]))
    elif cmd == "keys":
        print(json.dumps(sorted(list_all(c, sys.argv[3]))))
    elif cmd == "uploads":
        # Pending (unfinished) multipart uploads in a bucket.
        r = c.list_multipart_uploads(Bucket=sys.argv[3])
        print(json.dumps([u["Key"] for u in r.get("Uploads", [])]))
    elif cmd == "start-upload":
        # Start a multipart upload of BUCKET KEY and leave it unfinished.
        r = c.create_multipart_upload(Bucket=sys.argv[3], Key=sys.argv[4])
        print(json.dumps(r["UploadId"]))

main()
