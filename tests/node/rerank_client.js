// A rerankd client from another ecosystem: @grpc/grpc-js reading only the .proto (no generated
// Python, no reflection). Calls Rerank over TLS and prints the reply as one JSON line.
//
//   node rerank_client.js --addr 127.0.0.1:50051 --ca ca.pem [--cert client.pem --key client.key]
//                         --user 1 --items 50,172,181
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith("--") || i + 1 >= argv.length) {
      throw new Error(`expected --name value pairs, got ${argv.slice(i).join(" ")}`);
    }
    out[argv[i].slice(2)] = argv[i + 1];
  }
  for (const required of ["addr", "ca", "user", "items"]) {
    if (!out[required]) throw new Error(`missing --${required}`);
  }
  return out;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync("rerank/v1/reranker.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const rerank = grpc.loadPackageDefinition(definition).rerank.v1;
  const creds = grpc.credentials.createSsl(
    fs.readFileSync(args.ca),
    args.key ? fs.readFileSync(args.key) : null,
    args.cert ? fs.readFileSync(args.cert) : null,
  );
  const options = args["server-name"] ? { "grpc.ssl_target_name_override": args["server-name"] } : {};
  const client = new rerank.Reranker(args.addr, creds, options);
  const request = {
    user_id: args.user,
    candidates: args.items.split(",").filter(Boolean).map((id) => ({ item_id: id })),
  };
  const deadline = new Date(Date.now() + 10000);
  client.Rerank(request, { deadline }, (err, reply) => {
    client.close();
    if (err) {
      console.log(JSON.stringify({ error: grpc.status[err.code], details: err.details }));
      process.exitCode = 1;
      return;
    }
    console.log(JSON.stringify({
      model_version: reply.model_version,
      items: reply.items.map((it) => ({ item_id: it.item_id, rank: it.rank, score: it.score })),
    }));
  });
}

main();
