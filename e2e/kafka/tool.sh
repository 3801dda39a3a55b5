#!/usr/bin/env bash
# Runs one of Apache Kafka's command-line tools from the cached install, as the binary
# distribution's bin/kafka-*.sh scripts do:
#   tool.sh topics --bootstrap-server 127.0.0.1:9092 --list
#   tool.sh console-consumer --bootstrap-server 127.0.0.1:9092 --topic spend-per-minute --from-beginning
#   tool.sh consumer-groups | console-producer | configs | transactions ...
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
NAME=${1:?usage: tool.sh topics|console-consumer|console-producer|consumer-groups|configs|transactions ARGS...}
shift
case "$NAME" in
  topics) CLASS=org.apache.kafka.tools.TopicCommand ;;
  console-consumer) CLASS=org.apache.kafka.tools.consumer.ConsoleConsumer ;;
  console-producer) CLASS=org.apache.kafka.tools.ConsoleProducer ;;
  consumer-groups) CLASS=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  configs) CLASS=org.apache.kafka.tools.ConfigCommand ;;
  transactions) CLASS=org.apache.kafka.tools.TransactionsCommand ;;
  *) echo "tool.sh: unknown tool $NAME" >&2; exit 2 ;;
esac
KAFKA=$(bash "$HERE/install.sh")
exec java -Xmx256m -Dlog4j2.configurationFile="$HERE/tools-log4j2.yaml" -cp "$KAFKA/lib/*" "$CLASS" "$@"
