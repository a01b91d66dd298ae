# Export lme4's VerbAgg for benchmarks/bench_glmm.py (the crossed binomial benchmark).
#
#   Rscript benchmarks/export_verbagg.R [out.csv]     # default benchmarks/results/verbagg.csv
#
# r2 is coded 0/1 (Y = 1); the factors keep lme4's level order (the first is the reference).
suppressPackageStartupMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[[1]] else "benchmarks/results/verbagg.csv"
va <- lme4::VerbAgg
df <- data.frame(r2 = as.integer(va$r2 == "Y"), Anger = va$Anger, Gender = va$Gender,
                 btype = va$btype, situ = va$situ, id = as.character(va$id),
                 item = as.character(va$item))
write.csv(df, out, row.names = FALSE)
cat("wrote", out, nrow(df), "rows\n")
