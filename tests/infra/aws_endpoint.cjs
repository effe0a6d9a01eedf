// Preloaded into the Serverless Framework (node --require) by tests/infra: sends every AWS
// SDK v2 call it makes (SSM and STS while resolving variables) to the local moto server in
// EDGEFN_AWS_ENDPOINT, so `serverless package` runs offline with fake credentials.
const path = require("path");
const AWS = require(require.resolve("aws-sdk", { paths: [path.resolve(process.env.EDGEFN_SERVERLESS_DIR)] }));
AWS.config.update({ endpoint: process.env.EDGEFN_AWS_ENDPOINT, sslEnabled: false });
