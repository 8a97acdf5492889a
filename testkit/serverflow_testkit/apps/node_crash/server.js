// Crashes as soon as it starts, like an app missing its configuration.
console.error("fatal: DATABASE_URL is not set");
process.exit(1);
